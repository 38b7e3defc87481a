"""What monotone constraints and the load trend cost and buy: held-out error, ties, monotonicity.

    python -m measure.load_order                       # about a minute; prints a Markdown table
    python -m measure.load_order --out docs/models/load-order.json

For each objective (mean, quantile p90) and each source of rows (the synthetic workload the embedded
default is trained on, and router-shaped rows: TTFT-only and TPOT-only, no decode tokens in flight),
it trains several ways on the same rows: plain boosters, monotone constraints alone, and monotone
constraints with the load trend (what podlatency trains, :mod:`podlatency.learning.load_order`), in
milliseconds and in logs; the p90 also as a quantile deployment trains it, in the default set of four
(scored at the p90). Each is scored on:

- held-out error: median relative error and MAE, and for the quantile coverage and pinball loss;
- **apart**: the share of scheduling decisions (:func:`~podlatency.learning.workload.fleet_decisions`,
  2,000 decisions of 4 candidate pods, a fifth of pods queued) in which every two candidates whose
  load differs got different predictions, per target;
- **monotone**: among random pods, how often raising one monotone feature lowered a prediction.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from podlatency.bundle import ModelBundle
from podlatency.engines.predictor import Predictor
from podlatency.learning import workload
from podlatency.learning.load_order import LOAD_FEATURES, MONOTONE_FEATURES
from podlatency.learning.training import TrainingOptions, TrainingSet, synthetic_training_set, train_bundle
from podlatency.schema import (
    FEATURE_NAMES,
    RAW_FEATURES,
    TARGETS,
    ObservedSample,
    add_derived_columns,
    feature_matrix,
)

FloatMatrix = npt.NDArray[np.float32]
Predict = Callable[[FloatMatrix], npt.NDArray[np.float64]]

LOAD_COLUMNS = (*LOAD_FEATURES, "prefix_cache_score", "encoder_matched_size")
"""What differs between the candidates of one decision: the pods' own state (their cache hits too)."""

FRACTIONS = ("kv_cache_percentage", "prefix_cache_score")


def separated_share(predicted: npt.NDArray[np.float64], fleet: FloatMatrix) -> float:
    """The share of decisions in which every two candidates whose load differs are predicted apart.

    ``predicted`` and ``fleet`` are ``(decisions, candidates)`` and ``(decisions, candidates, features)``.
    """
    load = fleet[:, :, [FEATURE_NAMES.index(name) for name in LOAD_COLUMNS]]
    candidates = fleet.shape[1]
    apart = np.ones(len(fleet), dtype=bool)
    for first in range(candidates):
        for second in range(first + 1, candidates):
            differ = np.any(load[:, first] != load[:, second], axis=1)
            apart &= ~differ | (predicted[:, first] != predicted[:, second])
    return float(np.mean(apart))


def raised(rows: FloatMatrix, feature: str, step: float) -> FloatMatrix:
    """``rows`` with one raw feature raised by ``step`` (fractions capped at 1, cache hits at the items)."""
    result = rows.copy()
    column = FEATURE_NAMES.index(feature)
    result[:, column] += step
    if feature in FRACTIONS:
        result[:, column] = np.minimum(result[:, column], 1.0)
    if feature == "encoder_matched_size":
        result[:, column] = np.minimum(
            result[:, column], result[:, FEATURE_NAMES.index("encoder_input_size")]
        )
    add_derived_columns(result)
    return result


def monotone_violations(predict: Mapping[str, Predict], rows: FloatMatrix) -> dict[str, int]:
    """Per target, how many (pod, feature, step) raises moved a prediction against its direction."""
    violations = {}
    for target, predict_target in predict.items():
        directions = MONOTONE_FEATURES[target]
        base = predict_target(rows)
        count = 0
        for feature, direction in directions.items():
            if feature not in RAW_FEATURES:
                continue  # derived columns move with their raw ones
            steps = (0.02, 0.1, 0.4) if feature in FRACTIONS else (1, 4, 64, 2048)
            for step in steps:
                moved = predict_target(raised(rows, feature, step)) - base
                count += int(np.sum(direction * moved < -1e-6))
        violations[target] = count
    return violations


def predictors(bundle: ModelBundle) -> dict[str, Predict]:
    """Per target, the served prediction (XGBoost on the CPU) as a function of a feature matrix."""
    predictor = Predictor(bundle, "cpu", nthread=1)
    return {target: functools.partial(predictor.predict_target, target) for target in TARGETS}


def router_training_set(requests: int, seed: int) -> TrainingSet:
    """Router-shaped observations (:func:`~podlatency.learning.workload.router_observations`)."""
    rows = [msgspec.convert(row, ObservedSample) for row in workload.router_observations(requests, seed=seed)]
    actuals = {
        "ttft": np.array([row.actual_ttft_ms for row in rows]),
        "tpot": np.array([row.actual_tpot_ms for row in rows]),
    }
    return TrainingSet.from_observations(feature_matrix(rows), actuals)


def score(bundle: ModelBundle, fleet: FloatMatrix, pods: FloatMatrix) -> dict[str, object]:
    """Held-out error, the share of decisions apart, and monotone violations, per target."""
    predict = predictors(bundle)
    flat = np.ascontiguousarray(fleet.reshape(-1, fleet.shape[-1]))
    apart = {
        target: round(separated_share(predict[target](flat).reshape(fleet.shape[:2]), fleet), 3)
        for target in TARGETS
    }
    error = {
        target: {
            name: round(value, 4)
            for name, value in bundle.metrics[target].items()
            if name in {"median_ape", "coverage", "pinball_loss", "mae_ms"}
        }
        for target in TARGETS
    }
    return {"held_out": error, "apart": apart, "monotone_violations": monotone_violations(predict, pods)}


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    """Every objective x source x variant, scored."""
    fleet = workload.fleet_decisions(args.decisions, seed=7)
    pods = workload.generate(args.pods, seed=8).features
    sources = {
        "synthetic": synthetic_training_set(args.synthetic_rows),
        "router-shaped": router_training_set(args.router_requests, seed=13),
    }
    served = {"log_latency": True, "monotone": True, "load_trend": True}
    variants: dict[str, dict[str, Any]] = {
        "plain (ms)": {"log_latency": False, "monotone": False, "load_trend": False},
        "monotone (ms)": {"log_latency": False, "monotone": True, "load_trend": False},
        "plain (logs)": {"log_latency": True, "monotone": False, "load_trend": False},
        "monotone (logs)": {"log_latency": True, "monotone": True, "load_trend": False},
    }
    last: dict[str, dict[str, dict[str, Any]]] = {
        "mean": {"monotone + load trend (logs): served": served},
        "quantile": {
            "monotone + load trend (logs), p90 alone": served,
            "the same, in the set of four (p90 shown): served": served | {"quantiles": (0.5, 0.95, 0.99)},
        },
    }
    results = []
    for objective in ("mean", "quantile"):
        for source, data in sources.items():
            for variant, how in (variants | last[objective]).items():
                bundle = train_bundle(data, TrainingOptions(objective=objective, **how), source=source)
                scores = score(bundle, fleet, pods)
                results.append({"objective": objective, "source": source, "variant": variant} | scores)
    return results


def report(results: list[dict[str, object]]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| objective | rows | training | median rel. error TTFT / TPOT | MAE ms TTFT / TPOT "
        "| coverage TTFT / TPOT | pinball loss TTFT / TPOT | decisions apart TTFT / TPOT "
        "| monotone violations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in results:
        error, apart, violations = item["held_out"], item["apart"], item["monotone_violations"]
        if not (isinstance(error, dict) and isinstance(apart, dict) and isinstance(violations, dict)):
            raise TypeError("a result without its scores")
        ttft, tpot = error["ttft"], error["tpot"]
        quantile = "coverage" in ttft
        coverage = f"{ttft['coverage']:.3f} / {tpot['coverage']:.3f}" if quantile else ""
        pinball = f"{ttft['pinball_loss']:.2f} / {tpot['pinball_loss']:.3f}" if quantile else ""
        lines.append(
            f"| {item['objective']} | {item['source']} | {item['variant']} "
            f"| {ttft['median_ape']:.3f} / {tpot['median_ape']:.3f} "
            f"| {ttft['mae_ms']:.1f} / {tpot['mae_ms']:.2f} | {coverage} | {pinball} "
            f"| {apart['ttft']:.1%} / {apart['tpot']:.1%} | {sum(violations.values())} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Train, score, print the table; write JSON with ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m measure.load_order", description=__doc__)
    parser.add_argument("--synthetic-rows", type=int, default=20_000)
    parser.add_argument("--router-requests", type=int, default=3_000)
    parser.add_argument("--decisions", type=int, default=2_000)
    parser.add_argument("--pods", type=int, default=500, help="random pods the monotone check raises")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = run(args)
    print(report(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
