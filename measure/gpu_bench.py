"""``python -m measure.gpu_bench``: the three predict engines per batch size, and the crossover.

For batch sizes 1, 7, 64, 512 and 4096 rows of the embedded default model it times one predict call
per target (both targets, the way a request is served) with compiled trees on the CPU, XGBoost
``inplace_predict`` on the CPU with one thread and with all cores, and XGBoost on the GPU including
the copies to and from the device. The crossover is the smallest batch size from which the GPU is
faster than every CPU engine; set ``PODLATENCY_GPU_MIN_ROWS`` to it (smaller calls then go to the
compiled trees). Each point runs for at most half a second; compiling the model takes a few seconds
more, so the whole run stays well under five minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from podlatency.engines.compiling import Compiler
from podlatency.engines.predictor import Predictor, cuda_usable
from podlatency.learning.training import TrainingOptions, embedded_default
from podlatency.learning.workload import generate
from podlatency.registry import ModelRegistry
from podlatency.settings import Settings

BATCH_SIZES = (1, 7, 64, 512, 4096)
POINT_SECONDS = 0.5


def median_ms(predictor: Predictor, rows: int) -> float:
    """Median milliseconds of predicting both targets for ``rows`` rows."""
    matrix = generate(rows, seed=rows).features
    for _ in range(5):
        predictor.predict_all(matrix)
    durations: list[float] = []
    deadline = time.perf_counter() + POINT_SECONDS
    while time.perf_counter() < deadline or len(durations) < 5:
        started = time.perf_counter()
        predictor.predict_all(matrix)
        durations.append(time.perf_counter() - started)
    return round(statistics.median(durations) * 1000, 4)


def run_gpu_benchmark(out: Path) -> int:
    """Measure, print a table, write ``gpu-results.json``; 2 when there is no usable GPU."""
    if not cuda_usable():
        print("gpu_bench: XGBoost sees no usable GPU here; nothing to measure")
        return 2
    bundle = embedded_default(Settings().default_samples, TrainingOptions())
    compiled_trees = Predictor(bundle, "cpu", nthread=1)
    with tempfile.TemporaryDirectory(prefix="podlatency-gpu-bench-") as folder:
        registry = ModelRegistry(Path(folder))
        registry.save(bundle)
        compiled, _ = Compiler(Path(folder) / "compiled").load_or_compile(
            bundle.boosters, bundle.version, registry.bundle_dir(bundle.version)
        )
    compiled_trees.use_compiled(compiled)
    setups = {
        "compiled": compiled_trees,
        "cpu_nthread_1": Predictor(bundle, "cpu", nthread=1),
        "cpu_nthread_all": Predictor(bundle, "cpu", nthread=0),
        "gpu": Predictor(bundle, "cuda", nthread=1, gpu_min_rows=0),
    }
    table: dict[str, dict[str, float]] = {str(rows): {} for rows in BATCH_SIZES}
    print(f"{'rows':>6} {'compiled':>10} {'xgb 1 thread':>13} {'xgb all cores':>14} {'xgb gpu':>10}   (ms)")
    for rows in BATCH_SIZES:
        for name, predictor in setups.items():
            table[str(rows)][name] = median_ms(predictor, rows)
        point = table[str(rows)]
        print(
            f"{rows:6d} {point['compiled']:10.4f} {point['cpu_nthread_1']:13.4f} "
            f"{point['cpu_nthread_all']:14.4f} {point['gpu']:10.4f}"
        )
    crossover = next(
        (
            rows
            for rows in BATCH_SIZES
            if table[str(rows)]["gpu"]
            < min(value for name, value in table[str(rows)].items() if name != "gpu")
        ),
        None,
    )
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "model_version": bundle.version,
        "median_ms_both_targets": table,
        "crossover_rows": crossover,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-results.json").write_text(json.dumps(results, indent=2) + "\n")
    if crossover is None:
        print("the GPU was never faster here: keep PODLATENCY_DEVICE=cpu")
    else:
        print(f"crossover: the GPU is faster from {crossover} rows; set PODLATENCY_GPU_MIN_ROWS={crossover}")
    print(f"wrote {out / 'gpu-results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the GPU benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m measure.gpu_bench", description="CPU vs GPU predict time"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for gpu-results.json")
    return run_gpu_benchmark(parser.parse_args(argv).out)


if __name__ == "__main__":
    raise SystemExit(main())
