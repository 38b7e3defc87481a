"""What one 7-pod request costs in each design, without HTTP or concurrency.

    python -m measure.seed_designs.costs

It trains the embedded default model and times, for the same 7 pods and both targets: the seed's
per-row path (one-row DataFrame -> DMatrix -> predict) run sequentially and through
``asyncio.to_thread`` + ``gather``; the seed's batch (one DataFrame); and ours (one float32 matrix,
``inplace_predict``), each with XGBoost ``nthread`` = 1 and all cores. Medians of many repeats.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import msgspec

from measure.seed_designs.models import SeedModel, feature_dict
from podlatency.bundle import ModelBundle
from podlatency.engines.predictor import LoadedModel, Predictor
from podlatency.learning.training import TrainingOptions, embedded_default
from podlatency.learning.workload import pod_rows
from podlatency.schema import TARGETS, PodMetrics, feature_matrix
from podlatency.settings import Settings

REPEATS = 300


def median_ms(work: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median wall time of ``work`` in milliseconds, after a short warm-up."""
    for _ in range(20):
        work()
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        durations.append(time.perf_counter() - started)
    return round(statistics.median(durations) * 1000, 3)


def costs(bundle: ModelBundle, rows: list[PodMetrics], nthread: int) -> dict[str, float]:
    """Median milliseconds of each design for ``rows``, both targets, with ``nthread``."""
    features = [feature_dict(row) for row in rows]
    predictor = Predictor(bundle, "cpu", nthread=nthread)
    seed_model = SeedModel(LoadedModel(predictor), nthread=nthread)
    loop = asyncio.new_event_loop()

    async def to_thread_gather() -> None:
        await asyncio.gather(*(asyncio.to_thread(seed_model.predict_one, row) for row in features))

    def seed_batch() -> None:
        matrix = seed_model.frame(features)
        for target in TARGETS:
            seed_model.predict_frame(target, matrix)

    one_row = feature_matrix(rows[:1])
    try:
        return {
            "per-row DataFrame + predict, sequential": median_ms(
                lambda: [seed_model.predict_one(r) for r in features]
            ),
            "per-row, asyncio.to_thread + gather": median_ms(
                lambda: loop.run_until_complete(to_thread_gather())
            ),
            "one DataFrame for the batch": median_ms(seed_batch),
            "float32 matrix + inplace_predict (ours)": median_ms(
                lambda: predictor.predict_all(feature_matrix(rows))
            ),
            "inplace_predict, 1 row, one target": median_ms(
                lambda: predictor.predict_target("ttft", one_row)
            ),
        }
    finally:
        loop.close()


def main() -> int:
    """Print one line per design and nthread."""
    bundle = embedded_default(Settings().default_samples, TrainingOptions())
    rows = [msgspec.convert(row, PodMetrics) for row in pod_rows(7, seed=7)]
    for nthread, label in ((1, "nthread=1"), (0, "nthread=all")):
        for name, value in costs(bundle, rows, nthread).items():
            print(f"{label:12s} {name:42s} {value:8.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
