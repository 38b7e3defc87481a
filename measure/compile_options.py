"""Which options compiled trees are built with: compile cost against predict speed, on this machine.

    python -m measure.compile_options [--out bench-results] [--rounds 3]

Compiles the embedded default model's two boosters (TTFT and TPOT) with each candidate (gcc
optimisation level, tl2cgen's ``quantize``, translation units, parallel compiler processes) and
reports the compile's wall time, CPU time and library size; whether the outputs pass the check a
server makes before a library serves (equal to XGBoost's on the check matrix); and both targets'
predict time through the server's own binding (:class:`podlatency.engines.compiled.CompiledModel`): 7 rows
in the three CPU states of :mod:`measure.cpu_state` (a tight loop, cold caches, server-like) and
98 rows in a tight loop, the best of interleaved rounds. ``podlatency.engines.compiling`` uses the choice this
measured (docs/performance.md): a rollout compiles in the background, so its CPU and memory are what
serving gives up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from measure.cpu_state import CONDITIONS, CpuState
from measure.servers import default_model_folder
from podlatency.engines.compiled import CompiledModel, outputs_agree
from podlatency.engines.compiling import BuildOptions, export_library
from podlatency.engines.predictor import Predictor
from podlatency.learning.workload import pod_rows
from podlatency.registry import ModelRegistry

CANDIDATES = (
    BuildOptions(("-O3",), quantize=False),  # tl2cgen's default level
    BuildOptions(("-O1",), quantize=False),
    BuildOptions(("-Os",), quantize=False),
    BuildOptions(("-O2",), quantize=True),
    BuildOptions(("-O1",), quantize=True),
    BuildOptions(("-Os",), quantize=True),
    BuildOptions(("-Os",), quantize=True, translation_units=2, compiler_processes=2),
)


def compile_candidate(boosters: dict[str, Path], options: BuildOptions, folder: Path) -> dict[str, Any]:
    """Compile both targets' boosters with ``options`` into ``folder``: wall and CPU time, library size."""
    import xgboost as xgb  # noqa: PLC0415

    folder.mkdir()
    before, started = os.times(), time.perf_counter()
    for target, booster_file in boosters.items():
        export_library(xgb.Booster(model_file=str(booster_file)), folder / f"{target}.so", "gcc", options)
    wall, after = time.perf_counter() - started, os.times()
    cpu = sum(after[index] - before[index] for index in range(4))  # user, system, children's too
    return asdict(options) | {
        "compile_wall_s": round(wall, 1), "compile_cpu_s": round(cpu, 1),
        "libraries_kb": round(sum(library.stat().st_size for library in folder.iterdir()) / 1024),
    }  # fmt: skip


def predict_rounds(
    models: list[CompiledModel], state: CpuState, matrices: list[np.ndarray], rounds: int
) -> list[dict[str, float]]:
    """Each model's predict p50 per rows and CPU state, the best of ``rounds`` interleaved rounds."""
    small, large = matrices
    points = [(small, condition) for condition in CONDITIONS] + [(large, "tight")]
    best: list[dict[str, float]] = [{} for _ in models]
    for _ in range(rounds):
        for index, model in enumerate(models):
            for matrix, condition in points:
                name = f"{len(matrix)}_rows_{condition}"
                p50 = state.timed(lambda: model.predict_timed(matrix), condition, 1000)["p50_ms"]  # noqa: B023
                best[index][name] = min(p50, best[index].get(name, p50))
    return best


def main(argv: list[str] | None = None) -> int:
    """Measure every candidate and write ``compile-options.json``."""
    parser = argparse.ArgumentParser(prog="python -m measure.compile_options", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved predict rounds; the best is kept")
    args = parser.parse_args(argv)
    import msgspec  # noqa: PLC0415

    from podlatency.schema import PodMetrics, feature_matrix  # noqa: PLC0415

    matrices = [
        feature_matrix([msgspec.convert(row, PodMetrics) for row in pod_rows(count, seed=7)])
        for count in (7, 98)
    ]
    state = CpuState(json.dumps({"pods": pod_rows(len(matrices[0]), seed=7)}).encode())
    with (
        default_model_folder() as model_dir,
        tempfile.TemporaryDirectory(prefix="podlatency-compile-") as built,
    ):
        registry = ModelRegistry(model_dir)
        version = registry.active_version()
        assert version is not None  # noqa: S101  (trained just before)
        boosters = {target: registry.booster_file(version, target) for target in ("ttft", "tpot")}
        on_xgboost = Predictor(registry.load(version), "cpu", nthread=1)
        results, models = [], []
        for index, options in enumerate(CANDIDATES):
            folder = Path(built) / str(index)
            results.append(compile_candidate(boosters, options, folder))
            models.append(CompiledModel({target: folder / f"{target}.so" for target in boosters}))
            # What the server checks before a library serves: outputs equal XGBoost's on the check matrix.
            difference = outputs_agree(*on_xgboost.compiled_and_xgboost(models[-1]))
            results[-1]["agrees_with_xgboost"] = difference is None
            print(f"compiled {results[-1]}", flush=True)
        peak_mb = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
        for figures, predict in zip(
            results, predict_rounds(models, state, matrices, args.rounds), strict=True
        ):
            figures["predict_p50_ms"] = predict
            print(f"{' '.join(figures['gcc'])} quantize={figures['quantize']} "
                  f"units={figures['translation_units']}: predict p50 {predict} ms", flush=True)  # fmt: skip
    print(f"largest compiler process: {peak_mb} MB resident")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"cpus": os.cpu_count(), "model_version": version, "rounds": args.rounds,
               "candidates": results, "largest_compiler_rss_mb": peak_mb}  # fmt: skip
    (args.out / "compile-options.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
