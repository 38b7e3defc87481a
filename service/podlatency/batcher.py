"""Coalesces concurrent requests' rows into one predict call per target (flat combining).

The fixed cost of one ``inplace_predict`` call (~0.07 ms on CPU, far more for a GPU launch) dwarfs the
per-row cost (a few microseconds), so under concurrency it pays to predict many requests' rows at once.

How it works, with no timer thread:

- A request that finds the batcher idle becomes the *leader* and predicts at once: a lone request
  goes straight through and pays no added latency.
- Requests that arrive while a leader is predicting queue their rows and wait. When the leader's call
  returns it takes everything queued (up to ``max_rows``) as the next batch, runs it, and hands each
  request its slice of the results. Once its own rows are done it passes leadership to the oldest
  request still queued, or marks the batcher idle.
- ``max_wait_s`` (default 0) lets a leader linger briefly when others are queued, to fill bigger batches.

XGBoost releases the GIL inside predict, so requests keep arriving and queueing while a batch runs:
the busier the server, the larger the batches, the fewer fixed costs paid per row.

``on_batch(rows, requests)`` is called once per successful call (for metrics).

If a batch of several requests fails, each of its requests is retried alone, so one bad request
cannot fail the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

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


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class _Job:
    """One request's rows, and the lock it waits on.

    ``wake`` is held until the request may go on, and released exactly once: when its batch is done or
    when it is promoted to leader. A bare lock is several times cheaper than an Event, which pays for a
    Condition in Python on both sides, and this runs once per request under the GIL.
    """

    matrix: FloatMatrix
    queued_ns: int = field(default_factory=time.time_ns)
    wake: threading.Lock = field(default_factory=_held_lock)
    promoted: bool = False
    outcome: BatchOutcome | None = None
    error: BaseException | None = None


class MicroBatcher:
    """Runs ``predict`` on batches of concurrently submitted matrices."""

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
        self._lock = threading.Lock()
        self._queue: list[_Job] = []
        self._busy = False

    def submit(self, matrix: FloatMatrix) -> BatchOutcome:
        """Predict ``matrix``'s rows, batched with whatever else is in flight."""
        job = _Job(matrix)
        with self._lock:
            self._queue.append(job)
            leading = not self._busy
            self._busy = True
        if not leading:
            job.wake.acquire()
            if not job.promoted:
                return self._result(job)
        while job.outcome is None and job.error is None:
            self._run_next_batch()
        self._hand_over()
        return self._result(job)

    @staticmethod
    def _result(job: _Job) -> BatchOutcome:
        if job.error is not None:
            raise job.error
        assert job.outcome is not None  # noqa: S101  (set before the wake-up)
        return job.outcome

    def _take_batch(self) -> list[_Job]:
        with self._lock:
            batch: list[_Job] = []
            rows = 0
            while self._queue and (not batch or rows + len(self._queue[0].matrix) <= self._max_rows):
                job = self._queue.pop(0)
                batch.append(job)
                rows += len(job.matrix)
            return batch

    def _run_next_batch(self) -> None:
        if self._max_wait_s > 0:
            with self._lock:
                others_waiting = len(self._queue) > 1
            if others_waiting:
                time.sleep(self._max_wait_s)
        batch = self._take_batch()
        if not batch:
            return
        try:
            self._run(batch)
        except Exception as error:  # errors go to the requests they belong to
            if len(batch) == 1:
                batch[0].error = error
            else:  # retry alone, so only the request that fails gets an error
                for job in batch:
                    try:
                        self._run([job])
                    except Exception as job_error:
                        job.error = job_error
        finally:
            for job in batch:
                if job.outcome is None and job.error is None:
                    job.error = RuntimeError("batch prediction was interrupted")
                if not job.promoted:  # a promoted job was woken already, and leads this batch itself
                    job.wake.release()

    def _run(self, batch: list[_Job]) -> None:
        matrix = batch[0].matrix if len(batch) == 1 else np.concatenate([job.matrix for job in batch])
        started_ns = time.time_ns()
        by_target, target_times = self._predict(matrix)
        if self._on_batch is not None:
            self._on_batch(len(matrix), len(batch))
        offset = 0
        for job in batch:
            rows = len(job.matrix)
            job.outcome = BatchOutcome(
                by_target={target: values[offset : offset + rows] for target, values in by_target.items()},
                queued_ns=job.queued_ns,
                batch_started_ns=started_ns,
                target_times_ns=target_times,
                batch_rows=len(matrix),
                batch_requests=len(batch),
            )
            offset += rows

    def _hand_over(self) -> None:
        """Pass leadership to the oldest queued request, or go idle."""
        with self._lock:
            if not self._queue:
                self._busy = False
                return
            successor = self._queue[0]
        successor.promoted = True
        successor.wake.release()
