"""Several quantiles per target: one booster for the set, or one booster per quantile? Measured.

    python -m measure.quantile_sets                     # about 5 minutes on 2 cores (compiles)
    python -m measure.quantile_sets --no-compile        # training and calibration only, a minute
    python -m measure.quantile_sets --no-compile --one-thread    # never both cores (as tests run it)
    python -m measure.quantile_sets --out docs/bench/quantile-sets.json

On the embedded default's rows (20,000 synthetic rows, TTFT, log latency with podlatency's monotone
constraints, 200 rounds of depth 6, one OpenMP thread as the trainer uses), for the quantile set
0.5, 0.9, 0.95, 0.99 against today's single p90 booster, it measures each way to serve the set:

- ``separate``: one booster per quantile;
- ``one_output_per_tree``: one booster, XGBoost's default for several outputs (a tree per quantile
  per round);
- ``multi_output_tree``: one booster whose trees carry a vector of the quantiles in each leaf, also
  trained faster (``max_bin`` 64; or ``eta`` 0.2 for 100 rounds).

For each: training time (one and two threads), coverage and pinball loss per quantile of as many
fresh rows (another seed) after split conformal calibration on the held-out fifth, how often
neighbouring quantiles cross on the held-out rows before they are sorted, monotone violations, and,
compiled with tl2cgen as podlatency compiles, compile time and the compute of one 7-pod call
(tl2cgen's Python API, the same for every way; median of rounds). One run on one machine: compare
the ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from measure.load_order import monotone_violations
from podlatency.learning import workload
from podlatency.learning.load_order import load_trend
from podlatency.learning.training import (
    TrainingOptions,
    booster_params,
    conformal_scale,
    synthetic_training_set,
)
from podlatency.margins import trend_of
from podlatency.schema import FEATURE_NAMES

QUANTILES = (0.5, 0.9, 0.95, 0.99)
FASTER: dict[str, dict[str, Any]] = {
    "max_bin 64": {"max_bin": 64},
    "eta 0.2, 100 rounds": {"eta": 0.2, "rounds": 100},
}
"""Ways to train vector-leaf trees faster, by their name after ``multi_output_tree, ``."""
FloatMatrix = npt.NDArray[np.float32]
Margins = Callable[[FloatMatrix], npt.NDArray[np.float64]]


def params(alpha: float | tuple[float, ...], threads: int, strategy: str | None) -> dict[str, Any]:
    """XGBoost's parameters: podlatency's quantile training for ``alpha`` (one or a set)."""
    options = TrainingOptions(objective="quantile", nthread=threads)  # its depth, step and seed
    result: dict[str, Any] = booster_params(options, "ttft") | {
        "quantile_alpha": np.array(alpha) if isinstance(alpha, tuple) else alpha,
        # One intercept for every quantile: tl2cgen takes a single base score, XGBoost fits one per output.
        "base_score": 4.0,
    }
    if strategy is not None:
        result["multi_strategy"] = strategy
    return result


def train(way: str, features: FloatMatrix, label: npt.NDArray[np.float64], threads: int) -> list[xgb.Booster]:
    """The booster(s) serving the set one ``way``; ``single`` is today's p90 alone."""
    matrix = xgb.DMatrix(features, label=label)
    if way == "single":
        return [xgb.train(params(0.9, threads, None), matrix, 200)]
    if way == "separate":
        return [xgb.train(params(alpha, threads, None), matrix, 200) for alpha in QUANTILES]
    strategy, _, faster = way.partition(", ")
    if faster:  # a multi_output_tree trained faster: fewer histogram bins, or fewer, bigger steps
        options = dict(FASTER[faster])
        rounds = int(options.pop("rounds", 200))
        return [xgb.train(params(QUANTILES, threads, strategy) | options, matrix, rounds)]
    return [xgb.train(params(QUANTILES, threads, way), matrix, 200)]


def margins_of(boosters: list[xgb.Booster]) -> Margins:
    """Rows -> ``(rows, quantiles)`` margins, whichever way the boosters hold them."""

    def margins(rows: FloatMatrix) -> npt.NDArray[np.float64]:
        columns = [
            np.asarray(b.inplace_predict(rows, predict_type="margin")).reshape(len(rows), -1)
            for b in boosters
        ]
        return np.hstack(columns).astype(np.float64)

    return margins


def column(margins: Margins, index: int, rows: FloatMatrix) -> npt.NDArray[np.float64]:
    """One quantile's margins."""
    return margins(rows)[:, index]


def calibrated_scores(
    held_out: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    fresh: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    alphas: tuple[float, ...],
) -> tuple[list[float], list[float]]:
    """Per quantile, coverage and pinball loss on fresh rows with the factor the held-out rows set.

    Each pair is (margins, observed latencies); the calibrated quantiles are sorted before scoring.
    """
    held_margins, held_observed = held_out
    fresh_margins, fresh_observed = fresh
    predicted = np.exp(held_margins)
    scales = [conformal_scale(held_observed, predicted[:, k], alpha) for k, alpha in enumerate(alphas)]
    scored = np.sort(np.exp(fresh_margins) * np.array(scales), axis=1)
    error = fresh_observed[:, None] - scored
    pinball = np.mean(np.maximum(np.array(alphas) * error, (np.array(alphas) - 1.0) * error), axis=0)
    coverage = [round(float(np.mean(fresh_observed <= scored[:, k])), 3) for k in range(len(alphas))]
    return coverage, [round(float(value), 3) for value in pinball]


def compiled_figures(boosters: list[xgb.Booster], rows: FloatMatrix, workdir: Path) -> dict[str, float]:
    """Compile time, agreement with XGBoost, and one call's compute (median of 7 rounds of 2,000)."""
    import tl2cgen  # noqa: PLC0415  (only with --compile)
    import treelite  # noqa: PLC0415

    started = time.perf_counter()
    predictors = []
    for index, booster in enumerate(boosters):
        library = workdir / f"{len(list(workdir.iterdir()))}-{index}.so"
        model = treelite.frontend.from_xgboost(booster)
        tl2cgen.export_lib(
            model, toolchain="gcc", libpath=str(library), params={"parallel_comp": 1}, verbose=False
        )
        predictors.append(tl2cgen.Predictor(str(library), nthread=1))
    compile_s = time.perf_counter() - started
    dmatrix = tl2cgen.DMatrix(rows, dtype="float32")
    outputs = np.hstack(
        [np.asarray(p.predict(dmatrix, pred_margin=True)).reshape(len(rows), -1) for p in predictors]
    )
    difference = float(np.max(np.abs(outputs - margins_of(boosters)(rows))))
    rounds = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(2000):
            for predictor in predictors:
                predictor.predict(dmatrix, pred_margin=True)
        rounds.append((time.perf_counter() - started) / 2000 * 1e6)
    return {
        "compile_s": round(compile_s, 1),
        "max_difference_from_xgboost": difference,
        "call_us": round(float(np.median(rounds)), 1),
    }


def measure_way(way: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every figure for one way."""
    data = synthetic_training_set(args.rows).by_target["ttft"]
    order = np.random.default_rng(0).permutation(len(data))
    held, kept = order[: len(order) // 5], order[len(order) // 5 :]
    slopes = load_trend("ttft", data.features)
    vector = np.array([slopes.get(name, 0.0) for name in FEATURE_NAMES])
    label = np.log(data.observed_ms) - trend_of(data.features, vector)
    result: dict[str, Any] = {"way": way}
    for threads in (1, 2) if args.two_threads else (1,):
        started = time.perf_counter()
        boosters = train(way, data.features[kept], label[kept], threads)
        result[f"train_s_{threads}_thread"] = round(time.perf_counter() - started, 2)
    margins = margins_of(boosters)
    alphas = (0.9,) if way == "single" else QUANTILES
    held_margins = margins(data.features[held]) + trend_of(data.features[held], vector)[:, None]
    fresh = workload.generate(args.rows, seed=77)
    fresh_margins = margins(fresh.features) + trend_of(fresh.features, vector)[:, None]
    coverage, pinball = calibrated_scores(
        (held_margins, data.observed_ms[held]), (fresh_margins, fresh.ttft_ms), alphas
    )
    result["coverage"] = dict(zip(map(str, alphas), coverage, strict=True))
    result["pinball_loss"] = dict(zip(map(str, alphas), pinball, strict=True))
    result["crossings_per_1000_rows"] = round(
        float(np.sum(np.diff(held_margins, axis=1) < 0)) / len(held) * 1000, 1
    )
    pods = workload.generate(args.pods, seed=22).features
    result["monotone_violations"] = sum(
        monotone_violations({"ttft": functools.partial(column, margins, k)}, pods)["ttft"]
        for k in range(len(alphas))
    )
    if args.compile:
        seven = np.ascontiguousarray(workload.generate(7, seed=3).features)
        result |= compiled_figures(boosters, seven, workdir)
    return result


def report(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, with ratios to today's single p90."""
    single = results[0]
    lines = [
        "| way | train s (1 / 2 threads) | x single | coverage of fresh rows per quantile "
        "| p90 pinball loss | crossings / 1,000 rows | monotone violations | compile s | 7-pod call µs "
        "| x single |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in results:
        coverage = ", ".join(
            f"p{float(alpha) * 100:g} {value:.3f}" for alpha, value in item["coverage"].items()
        )
        call = item.get("call_us")
        call_ratio = "" if call is None else f"{call / single['call_us']:.1f}"
        training = f"{item['train_s_1_thread']} / {item.get('train_s_2_thread', '-')}"
        lines.append(
            f"| {item['way']} | {training} | {item['train_s_1_thread'] / single['train_s_1_thread']:.1f} "
            f"| {coverage} | {item['pinball_loss']['0.9']} | {item['crossings_per_1000_rows']} "
            f"| {item['monotone_violations']} "
            f"| {item.get('compile_s', '')} | {call or ''} | {call_ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure every way, print the table; write JSON with ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m measure.quantile_sets", description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--pods", type=int, default=200, help="random pods the monotone check raises")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--one-thread", dest="two_threads", action="store_false", help="time training on one thread only"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="podlatency-quantile-sets-") as folder:
        ways = (
            "single",
            "separate",
            "one_output_per_tree",
            "multi_output_tree",
            *(f"multi_output_tree, {faster}" for faster in FASTER),
        )
        results = [measure_way(way, args, Path(folder)) for way in ways]
    print(report(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
