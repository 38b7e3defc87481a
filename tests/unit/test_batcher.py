"""The micro-batcher: lone requests go straight through, concurrent ones share calls, errors stay put."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from podlatency.engines.batching import BatchOutcome, FloatMatrix, MicroBatcher, TargetArrays


class RowSums:
    """A stand-in model: ttft = row sum, tpot = row max; records every call's row count."""

    def __init__(self, delay_s: float = 0.0, poison: float | None = None) -> None:
        self.delay_s = delay_s
        self.poison = poison
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, matrix: FloatMatrix) -> tuple[TargetArrays, dict[str, tuple[int, int]]]:
        started = time.time_ns()
        with self.lock:
            self.calls.append(len(matrix))
        if self.poison is not None and (matrix == self.poison).any():
            raise ValueError("poisoned row")
        time.sleep(self.delay_s)
        result = {
            "ttft": matrix.sum(axis=1).astype(np.float64),
            "tpot": matrix.max(axis=1).astype(np.float64),
        }
        return result, {"ttft": (started, time.time_ns()), "tpot": (started, time.time_ns())}


def rows(request: int, count: int) -> FloatMatrix:
    """Rows unique to one request, so a wrong split shows."""
    return np.arange(count * 3, dtype=np.float32).reshape(count, 3) + request * 1000


def check(outcome: BatchOutcome, matrix: FloatMatrix) -> None:
    np.testing.assert_array_equal(outcome.by_target["ttft"], matrix.sum(axis=1))
    np.testing.assert_array_equal(outcome.by_target["tpot"], matrix.max(axis=1))


def test_lone_request_goes_straight_through() -> None:
    """With nothing else in flight a request is its own batch and does not wait."""
    model = RowSums()
    batcher = MicroBatcher(model)
    matrix = rows(1, 7)
    outcome = batcher.submit(matrix)
    check(outcome, matrix)
    assert (outcome.batch_requests, outcome.batch_rows) == (1, 7)
    assert outcome.batch_started_ns - outcome.queued_ns < 5_000_000
    assert model.calls == [7]


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    """Requests arriving during a predict are coalesced into the next call; each gets its own slice."""
    model = RowSums(delay_s=0.02)
    batcher = MicroBatcher(model)
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(batcher.submit, rows(index, 1 + index % 5)) for index in range(64)]
        outcomes = [future.result(timeout=30) for future in futures]
    for index, outcome in enumerate(outcomes):
        check(outcome, rows(index, 1 + index % 5))
    assert sum(model.calls) == sum(1 + index % 5 for index in range(64))
    assert len(model.calls) < 64 / 2, f"expected shared calls, got {model.calls}"
    assert max(outcome.batch_requests for outcome in outcomes) > 1


def test_batches_respect_max_rows() -> None:
    """No call gets more than max_rows rows (a request larger than that still runs, alone)."""
    model = RowSums(delay_s=0.01)
    batcher = MicroBatcher(model, max_rows=10)
    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(lambda index: batcher.submit(rows(index, 4)), range(48)))
    assert max(model.calls) <= 10
    assert batcher.submit(rows(99, 25)).batch_rows == 25


def test_a_failing_request_does_not_fail_its_batch() -> None:
    """When a shared call fails, each request is retried alone: only the bad one gets the error."""
    poison = -1.0
    model = RowSums(delay_s=0.02, poison=poison)
    batcher = MicroBatcher(model)
    bad = np.full((2, 3), poison, dtype=np.float32)

    def submit(index: int) -> BatchOutcome | Exception:
        try:
            return batcher.submit(bad if index == 5 else rows(index, 3))
        except ValueError as error:
            return error

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(submit, range(24)))
    assert isinstance(results[5], ValueError)
    for index, result in enumerate(results):
        if index != 5:
            assert isinstance(result, BatchOutcome), index
            check(result, rows(index, 3))


def test_batcher_recovers_to_idle() -> None:
    """After a burst the batcher is idle again: the next lone request runs alone at once."""
    model = RowSums(delay_s=0.005)
    batcher = MicroBatcher(model)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda index: batcher.submit(rows(index, 2)), range(40)))
    assert batcher.submit(rows(7, 2)).batch_requests == 1


@pytest.mark.parametrize("wait_ms", [0.0, 2.0])
def test_many_threads_never_deadlock(wait_ms: float) -> None:
    """Hundreds of submits from many threads all complete, with or without a batch window."""
    batcher = MicroBatcher(RowSums(), max_wait_s=wait_ms / 1000)
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(batcher.submit, rows(index % 50, 2)) for index in range(600)]
        for index, future in enumerate(futures):
            check(future.result(timeout=30), rows(index % 50, 2))


def test_a_caller_that_may_not_lead_never_predicts_on_its_own_thread() -> None:
    """``may_lead=False`` (the event loop): even an idle batcher runs the rows on its relief thread."""
    threads: list[str] = []

    def predict(matrix: FloatMatrix) -> tuple[TargetArrays, dict[str, tuple[int, int]]]:
        threads.append(threading.current_thread().name)
        return RowSums()(matrix)

    batcher = MicroBatcher(predict)
    delivered = threading.Event()
    outcomes: list[BatchOutcome | None] = []

    def deliver(outcome: BatchOutcome | None, error: BaseException | None) -> None:
        assert error is None
        outcomes.append(outcome)
        delivered.set()

    batcher.submit_nowait(rows(1, 2), deliver, may_lead=False)
    assert delivered.wait(5)
    assert outcomes[0] is not None
    check(outcomes[0], rows(1, 2))
    assert threads == [name for name in threads if name.startswith("podlatency-batch-relief")] != []
    batcher.submit_nowait(rows(2, 2), lambda outcome, error: None)  # may lead: runs here
    assert threads[-1] == threading.current_thread().name


def test_a_leading_request_is_not_held_up_by_later_ones() -> None:
    """The thread that leads returns once its own rows are done; the relief thread runs what queued since."""
    model = RowSums(delay_s=0.05)
    batcher = MicroBatcher(model)
    later_done = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        leader = pool.submit(batcher.submit, rows(0, 1))
        time.sleep(0.01)  # the leader's batch is running
        for index in range(1, 4):
            batcher.submit_nowait(rows(index, 1), lambda outcome, error: later_done.set(), may_lead=False)
        started = time.monotonic()
        check(leader.result(timeout=5), rows(0, 1))
        assert time.monotonic() - started < 0.09, "the leader waited for the batch queued after it"
    assert later_done.wait(5)
    assert model.calls == [1, 3]


def test_a_closed_batcher_still_answers_from_the_caller() -> None:
    """Once closed (model replaced), requests still in flight are predicted by the calling thread."""
    batcher = MicroBatcher(RowSums())
    batcher.submit(rows(1, 1))
    batcher.close()
    check(batcher.submit(rows(2, 3)), rows(2, 3))
    answers: list[BatchOutcome | None] = []
    batcher.submit_nowait(rows(3, 2), lambda outcome, error: answers.append(outcome), may_lead=False)
    assert answers[0] is not None
    check(answers[0], rows(3, 2))
