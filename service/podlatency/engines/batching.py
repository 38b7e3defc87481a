"""Coalesces concurrent requests' rows into one predict call per target.

The fixed cost of one ``inplace_predict`` call (far more for a GPU launch) dwarfs the per-row cost, so
under concurrency it pays to predict many requests' rows at once.

How it works, with no timer:

- A request that finds the batcher idle becomes the *leader* and predicts at once, on its own thread:
  a lone request goes straight through and pays no added latency.
- Requests that arrive while a batch runs are queued. When a batch is done, the leader takes
  everything queued (up to ``max_rows``) as the next batch, and hands each request its slice of the
  results through the request's ``deliver`` callback.
- A leader that came with a request of its own stops once its rows are done, so that request is not
  held up by later ones: it hands the rest of the queue to a *relief* thread, which leads until the
  queue is empty and the batcher goes idle again. A caller that must not block (an event loop)
  never leads: its rows go to the relief thread at once.
- ``max_wait_s`` (default 0) lets a leader linger briefly when others are queued, to fill bigger batches.

XGBoost releases the GIL inside predict, so requests keep arriving and queueing while a batch runs:
the busier the server, the larger the batches, the fewer fixed costs paid per row.

Two ways in: :meth:`MicroBatcher.submit` blocks its thread until the rows are predicted;
:meth:`MicroBatcher.submit_nowait` returns at once (after leading, when the batcher was idle and the
caller may lead) and the result arrives through a callback, so a waiting request holds no thread:
``/v1/predict`` queues its rows from the event loop and awaits the result there.

``on_batch(rows, requests)`` is called once per successful call (for metrics).

If a batch of several requests fails, each of its requests is retried alone, so one bad request
cannot fail the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

FloatMatrix = npt.NDArray[np.float32]
TargetArrays = dict[str, npt.NDArray[np.float64]]
PredictFunction = Callable[[FloatMatrix], tuple[TargetArrays, dict[str, tuple[int, int]]]]
"""Predicts every target for a matrix; returns the arrays and each target's (start_ns, end_ns)."""


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One request's share of a batch, and what the batch was."""

    by_target: TargetArrays
    queued_ns: int
    batch_started_ns: int
    target_times_ns: dict[str, tuple[int, int]]
    batch_rows: int
    batch_requests: int

    @property
    def batch_ended_ns(self) -> int:
        """When the batch's last predict call returned."""
        return max(end for _, end in self.target_times_ns.values())


Delivery = Callable[[BatchOutcome | None, BaseException | None], None]
"""Receives a request's outcome, or the error its rows met; called once, on the thread that ran the batch."""


@dataclass(eq=False, slots=True)
class _Job:
    """One request's rows and where its result goes."""

    matrix: FloatMatrix
    deliver: Delivery
    queued_ns: int = field(default_factory=time.time_ns)
    delivered: bool = False


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class MicroBatcher:
    """Runs ``predict`` on batches of concurrently submitted matrices.

    Its relief thread (started on first use) runs the rest of the queue when a leading request's own
    rows are done.
    """

    def __init__(
        self,
        predict: PredictFunction,
        max_rows: int = 4096,
        max_wait_s: float = 0.0,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self._predict = predict
        self._on_batch = on_batch
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._relief: ThreadPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._queue: list[_Job] = []
        self._busy = False

    def submit(self, matrix: FloatMatrix) -> BatchOutcome:
        """Predict ``matrix``'s rows, batched with whatever else is in flight; blocks until done."""
        done = _held_lock()
        answer: list[tuple[BatchOutcome | None, BaseException | None]] = []

        def deliver(outcome: BatchOutcome | None, error: BaseException | None) -> None:
            answer.append((outcome, error))
            done.release()

        self.submit_nowait(matrix, deliver)
        done.acquire()
        outcome, error = answer[0]
        if error is not None:
            raise error
        assert outcome is not None  # noqa: S101  (one of the two is always set)
        return outcome

    def submit_nowait(self, matrix: FloatMatrix, deliver: Delivery, *, may_lead: bool = True) -> None:
        """Queue ``matrix``'s rows; ``deliver`` gets the outcome from whichever thread runs their batch.

        When the batcher is idle and ``may_lead``, the calling thread leads: it predicts at once and
        returns after its own rows are delivered. Without ``may_lead`` (an event loop, which must not
        block) the batch runs on the relief thread. Otherwise it returns at once.
        """
        job = _Job(matrix, deliver)
        with self._lock:
            self._queue.append(job)
            if self._busy:
                return
            self._busy = True
        if not may_lead and self._start_relief():
            return
        self._lead(job)

    def close(self) -> None:
        """Stop the batcher's own relief thread once it is idle (a replaced model's batcher).

        Rows queued afterwards are predicted by the threads that queue them.
        """
        self._closed = True
        if self._relief is not None:
            self._relief.shutdown(wait=False)

    def _lead(self, own: _Job | None) -> None:
        """Run batches until the queue is empty, or, leading for ``own``, until ``own`` is delivered."""
        while self._run_next_batch():
            if own is not None and own.delivered:
                if self._hand_over():
                    return
                own = None  # no relief thread to be had: keep leading here

    def _hand_over(self) -> bool:
        """Give the queue to the relief thread, or go idle when it is empty; ``False`` if neither."""
        with self._lock:
            if not self._queue:
                self._busy = False
                return True
        return self._start_relief()

    def _start_relief(self) -> bool:
        """Have the relief thread lead until the queue is empty; ``False`` once the batcher is closed."""
        if self._closed:
            return False
        try:
            self._relief_executor().submit(self._lead, None)
        except RuntimeError:  # shut down: the caller leads
            return False
        return True

    def _relief_executor(self) -> ThreadPoolExecutor:
        if self._relief is None:
            self._relief = ThreadPoolExecutor(max_workers=1, thread_name_prefix="podlatency-batch-relief")
        return self._relief

    def _take_batch(self) -> list[_Job]:
        """The next batch; when nothing is queued, the batcher goes idle and the batch is empty."""
        with self._lock:
            batch: list[_Job] = []
            rows = 0
            while self._queue and (not batch or rows + len(self._queue[0].matrix) <= self._max_rows):
                job = self._queue.pop(0)
                batch.append(job)
                rows += len(job.matrix)
            if not batch:
                self._busy = False
            return batch

    def _run_next_batch(self) -> bool:
        """Run one batch and deliver its results; ``False`` when there was none (now idle)."""
        if self._max_wait_s > 0:
            with self._lock:
                others_waiting = len(self._queue) > 1
            if others_waiting:
                time.sleep(self._max_wait_s)
        batch = self._take_batch()
        if not batch:
            return False
        results: list[tuple[BatchOutcome | None, BaseException | None]] = []
        try:
            results = self._outcomes(batch)
        finally:
            if len(results) < len(batch):  # interrupted (KeyboardInterrupt, SystemExit)
                results = [(None, RuntimeError("batch prediction was interrupted"))] * len(batch)
            for job, (outcome, failure) in zip(batch, results, strict=True):
                job.delivered = True
                try:
                    job.deliver(outcome, failure)
                except Exception:  # one broken receiver must not stop the others
                    logger.exception("could not deliver a batched prediction")
        return True

    def _outcomes(self, batch: list[_Job]) -> list[tuple[BatchOutcome | None, BaseException | None]]:
        """Each request's outcome or error; errors go to the requests they belong to."""
        try:
            return [(outcome, None) for outcome in self._run(batch)]
        except Exception as error:
            if len(batch) == 1:
                return [(None, error)]
            # Retried alone, so only the request that fails gets an error.
            return [self._run_alone(job) for job in batch]

    def _run_alone(self, job: _Job) -> tuple[BatchOutcome | None, BaseException | None]:
        try:
            return self._run([job])[0], None
        except Exception as error:
            return None, error

    def _run(self, batch: list[_Job]) -> list[BatchOutcome]:
        matrix = batch[0].matrix if len(batch) == 1 else np.concatenate([job.matrix for job in batch])
        started_ns = time.time_ns()
        by_target, target_times = self._predict(matrix)
        if self._on_batch is not None:
            self._on_batch(len(matrix), len(batch))
        outcomes: list[BatchOutcome] = []
        offset = 0
        for job in batch:
            rows = len(job.matrix)
            outcomes.append(
                BatchOutcome(
                    by_target={
                        target: values[offset : offset + rows] for target, values in by_target.items()
                    },
                    queued_ns=job.queued_ns,
                    batch_started_ns=started_ns,
                    target_times_ns=target_times,
                    batch_rows=len(matrix),
                    batch_requests=len(batch),
                )
            )
            offset += rows
        return outcomes
