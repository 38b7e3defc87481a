"""The seed post's own benchmark, rerun: 10 tasks of 20 ms ``time.sleep`` three ways.

    python -m measure.seed_designs.sleep_benchmark

The post reported 2,451 ms for ``asyncio.to_thread`` + ``gather`` against 25 ms for
``ThreadPoolExecutor.map``, and concluded that mixing asyncio with threads costs ~100x. Run here,
the two are within a few milliseconds of each other: sleeping releases the GIL, so both overlap the
ten sleeps; ``to_thread`` just has fewer threads (asyncio's default executor has min(32, CPUs + 4)).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

TASKS = 10
SLEEP_S = 0.02
REPEATS = 5


def mock_prediction(value: int) -> int:
    """The post's stand-in for a prediction: 20 ms of sleep."""
    time.sleep(SLEEP_S)
    return value * 2


async def asyncio_to_thread_gather() -> float:
    """Tasks around ``asyncio.to_thread``, then ``gather`` (the post's 'slow' design)."""
    started = time.perf_counter()
    tasks = [asyncio.create_task(asyncio.to_thread(mock_prediction, index)) for index in range(TASKS)]
    await asyncio.gather(*tasks)
    return (time.perf_counter() - started) * 1000


def thread_pool_map() -> float:
    """A fresh ``ThreadPoolExecutor(max_workers=10)`` and ``map``."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=TASKS) as executor:
        list(executor.map(mock_prediction, range(TASKS)))
    return (time.perf_counter() - started) * 1000


def sequential() -> float:
    """One after another."""
    started = time.perf_counter()
    for index in range(TASKS):
        mock_prediction(index)
    return (time.perf_counter() - started) * 1000


async def measure() -> dict[str, float]:
    """Mean milliseconds of each design over ``REPEATS`` runs, interleaved as the post did."""
    runs: dict[str, list[float]] = {"to_thread + gather": [], "ThreadPoolExecutor.map": [], "sequential": []}
    for _ in range(REPEATS):
        runs["to_thread + gather"].append(await asyncio_to_thread_gather())
        runs["ThreadPoolExecutor.map"].append(thread_pool_map())
        runs["sequential"].append(sequential())
    return {name: round(statistics.mean(values), 1) for name, values in runs.items()}


def main() -> int:
    """Print the three means."""
    for name, mean_ms in asyncio.run(measure()).items():
        print(f"{name:24s} {mean_ms:8.1f} ms  (10 x 20 ms, mean of {REPEATS})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
