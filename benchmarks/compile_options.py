"""Which compiler options compiled trees use: compile cost against predict speed, on this machine.

    python -m benchmarks.compile_options [--out bench-results]

Compiles the embedded default model's TTFT booster with each candidate (gcc optimisation level,
translation units, parallel compiler processes) and reports the compile's wall time, CPU time, peak
memory of the compiler, and the library's predict time for 7 and 98 rows. ``podlatency.compiler``
uses the choice this measured (docs/performance.md): a rollout compiles in the background, so its
CPU and memory are what serving gives up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.servers import default_model_folder
from podlatency.registry import ModelRegistry
from podlatency.workload import pod_rows

CANDIDATES = (
    ("-O3", 1, 1),  # tl2cgen's default level
    ("-O2", 1, 1),
    ("-O1", 1, 1),
    ("-O0", 1, 1),
    ("-O2", 2, 2),
    ("-O1", 2, 2),
)
"""(optimisation level, translation units, compiler processes)."""


def measure(
    booster_file: Path, option: str, units: int, jobs: int, matrices: list[np.ndarray]
) -> dict[str, Any]:
    """Compile once with these options; time it and the library's predict calls."""
    import tl2cgen  # noqa: PLC0415
    import treelite  # noqa: PLC0415
    import xgboost as xgb  # noqa: PLC0415

    model = treelite.frontend.from_xgboost(xgb.Booster(model_file=str(booster_file)))
    with tempfile.TemporaryDirectory(prefix="podlatency-compile-") as folder:
        library = Path(folder) / "ttft.so"
        before, started = os.times(), time.perf_counter()
        tl2cgen.export_lib(
            model,
            toolchain="gcc",
            libpath=library,
            params={"parallel_comp": units},
            nthread=jobs,
            options=[option],
        )
        wall, after = time.perf_counter() - started, os.times()
        cpu = sum(after[index] - before[index] for index in range(4))  # user, system, children's too
        predictor = tl2cgen.Predictor(str(library), nthread=1)
        predict_ms = {}
        for matrix in matrices:
            rows = tl2cgen.DMatrix(matrix, dtype="float32")
            for _ in range(200):
                predictor.predict(rows)
            started = time.perf_counter()
            for _ in range(2000):
                predictor.predict(tl2cgen.DMatrix(matrix, dtype="float32"))
            predict_ms[str(len(matrix))] = round((time.perf_counter() - started) / 2000 * 1000, 4)
    return {
        "option": option, "translation_units": units, "compiler_processes": jobs,
        "compile_wall_s": round(wall, 1), "compile_cpu_s": round(cpu, 1),
        "predict_ms_by_rows": predict_ms,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Measure every candidate and write ``compile-options.json``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_options", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    import msgspec  # noqa: PLC0415

    from podlatency.schema import PodMetrics, feature_matrix  # noqa: PLC0415

    matrices = [
        feature_matrix([msgspec.convert(row, PodMetrics) for row in pod_rows(count, seed=7)])
        for count in (7, 98)
    ]
    results = []
    with default_model_folder() as model_dir:
        registry = ModelRegistry(model_dir)
        version = registry.active_version()
        assert version is not None  # noqa: S101  (trained just before)
        booster_file = registry.booster_file(version, "ttft")
        for option, units, jobs in CANDIDATES:
            figures = measure(booster_file, option, units, jobs, matrices)
            results.append(figures)
            print(
                f"{option} units={units} processes={jobs}: compile {figures['compile_wall_s']} s wall, "
                f"{figures['compile_cpu_s']} s CPU; predict {figures['predict_ms_by_rows']} ms by rows",
                flush=True,
            )
    peak_mb = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    print(f"largest compiler process: {peak_mb} MB resident")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"cpus": os.cpu_count(), "model_version": version, "booster": "ttft", "candidates": results,
               "largest_compiler_rss_mb": peak_mb}  # fmt: skip
    (args.out / "compile-options.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
