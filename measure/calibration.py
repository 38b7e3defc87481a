"""How well a quantile model holds each of its quantiles: per load regime, across load, within a fleet.

    python -m measure.calibration                        # about a minute on one core
    python -m measure.calibration --draws 12 --out docs/models/calibration.json

The model is what a quantile deployment trains: the default set (0.5, 0.9, 0.95, 0.99) from one
booster per target, calibrated per quantile. Three measurements, coverage being the share of fresh
actuals at or below the prediction:

- ``regimes``: a deployment whose whole fleet sits in a light, a mixed or a heavy load regime (10%,
  40% or 80% of pods with a queue), trained on 20,000 of its observations as the embedded default is;
  coverage per quantile of 20,000 fresh ones.
- ``small``: a small deployment in one regime (``workload.single_regime_observations``: 3,000
  requests, latency growing with tokens in flight, Gaussian or log-normal noise), kept in a
  ``SampleStore`` and trained as a trainer would; per quantile, each draw's worst quarter of the
  tokens-in-flight range, as its distance from the quantile (mean and max over the draws).
- ``within_fleet``: the mixed fleet's model, its coverage on the pods of each queue depth (idle, 1-5
  waiting, more), beside the same trained without monotone constraints, and one single-quantile
  booster per quantile, on the same rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from podlatency.bundle import ModelBundle
from podlatency.engines.predictor import Predictor
from podlatency.learning import workload
from podlatency.learning.samples import SampleStore, actual_ms
from podlatency.learning.training import TrainingOptions, TrainingSet, train_bundle
from podlatency.schema import FEATURE_NAMES, TARGETS, ObservedSample, feature_matrix

QUANTILES = (0.5, 0.9, 0.95, 0.99)
SET = TrainingOptions(objective="quantile", quantile_alpha=0.9, quantiles=QUANTILES)
REGIMES = {"light": 0.1, "mixed": 0.4, "heavy": 0.8}
"""Share of pods with a queue in each regime."""
QUEUE_DEPTHS = {"idle": (0, 0), "1-5 waiting": (1, 5), "6+ waiting": (6, None)}


def coverage_by_quarter(
    bundle: ModelBundle, rows: list[dict[str, object]], in_flight: npt.NDArray[np.float64]
) -> dict[str, dict[float, list[float]]]:
    """Per target and served quantile, the share of actuals at or below it per quarter of tokens in flight.

    ``rows`` alternate TTFT and TPOT rows of the same requests, as ``single_regime_observations`` writes.
    """
    samples = [msgspec.convert(row, ObservedSample) for row in rows]
    quarters = np.digitize(in_flight, np.quantile(in_flight, [0.25, 0.5, 0.75]))
    predictor = Predictor(bundle, "cpu", nthread=1)
    coverage: dict[str, dict[float, list[float]]] = {}
    for offset, target in enumerate(TARGETS):
        observed = samples[offset::2]
        actual = np.array([actual_ms(sample, target) for sample in observed])
        estimates = predictor.predict_quantiles(target, feature_matrix(observed)).reshape(len(observed), -1)
        coverage[target] = {
            alpha: [
                float(np.mean(actual[quarters == quarter] <= estimates[quarters == quarter, column]))
                for quarter in range(4)
            ]
            for column, alpha in enumerate(bundle.quantiles)
        }
    return coverage


def worst_quarters(seed: int, noise: str) -> dict[str, dict[float, float]]:
    """One small draw: train as a trainer would; per target and quantile, the worst quarter's distance."""
    rows, _ = workload.single_regime_observations(3_000, seed=seed, noise=noise)
    with tempfile.TemporaryDirectory() as folder:
        store = SampleStore(Path(folder))
        store.add([msgspec.convert(row, ObservedSample) for row in rows])
        bundle = train_bundle(store.training_set(), SET, "draw")
    fresh, in_flight = workload.single_regime_observations(20_000, seed=10_000 + seed, noise=noise)
    return {
        target: {
            alpha: max(abs(covered - alpha) for covered in quarters) for alpha, quarters in by_alpha.items()
        }
        for target, by_alpha in coverage_by_quarter(bundle, fresh, in_flight).items()
    }


def small(draws: int) -> list[dict[str, Any]]:
    """Per noise, target and quantile: the worst quarter's distance from the quantile over the draws."""
    results = []
    for noise in ("gaussian", "lognormal"):
        worst = [worst_quarters(seed, noise) for seed in range(draws)]
        for target in TARGETS:
            for alpha in QUANTILES:
                values = [draw[target][alpha] for draw in worst]
                results.append(
                    {
                        "noise": noise,
                        "target": target,
                        "quantile": alpha,
                        "mean": round(statistics.mean(values), 3),
                        "max": round(max(values), 3),
                    }
                )
    return results


def observations(rows: int, seed: int, queued_share: float) -> tuple[TrainingSet, workload.WorkloadSample]:
    """``rows`` synthetic observations as a training set, and the sample they came from."""
    sample = workload.generate(rows, seed=seed, queued_share=queued_share)
    return TrainingSet.from_observations(
        sample.features, {"ttft": sample.ttft_ms, "tpot": sample.tpot_ms}
    ), sample


def coverage(predicted: npt.NDArray[np.float64], actual: npt.NDArray[np.float64]) -> list[float]:
    """Per column (a quantile each), the share of actuals at or below it."""
    return [round(float(np.mean(actual <= predicted[:, column])), 3) for column in range(predicted.shape[1])]


def regimes() -> list[dict[str, Any]]:
    """Per regime and target: coverage per quantile of fresh rows."""
    results = []
    for regime, share in REGIMES.items():
        data, _ = observations(20_000, seed=21, queued_share=share)
        predictor = Predictor(train_bundle(data, SET, regime), "cpu", nthread=1)
        fresh = workload.generate(20_000, seed=22, queued_share=share)
        for target, actual in (("ttft", fresh.ttft_ms), ("tpot", fresh.tpot_ms)):
            predicted = predictor.predict_quantiles(target, fresh.features)
            results.append({"regime": regime, "target": target, "coverage": coverage(predicted, actual)})
    return results


def within_fleet() -> list[dict[str, Any]]:
    """In the mixed fleet: coverage by queue depth, the set's one booster against a booster per quantile."""
    data, _ = observations(20_000, seed=21, queued_share=REGIMES["mixed"])
    one = Predictor(train_bundle(data, SET, "set"), "cpu", nthread=1)
    free = Predictor(train_bundle(data, replace(SET, monotone=False), "free"), "cpu", nthread=1)
    each = [
        Predictor(
            train_bundle(data, TrainingOptions(objective="quantile", quantile_alpha=alpha), "one"), "cpu", 1
        )
        for alpha in QUANTILES
    ]
    fresh = workload.generate(20_000, seed=22, queued_share=REGIMES["mixed"])
    waiting = fresh.features[:, FEATURE_NAMES.index("num_request_waiting")]
    results = []
    for target, actual in (("ttft", fresh.ttft_ms), ("tpot", fresh.tpot_ms)):
        ways = {
            "one booster (served)": one.predict_quantiles(target, fresh.features),
            "one booster, not monotone": free.predict_quantiles(target, fresh.features),
            "a booster per quantile": np.column_stack(
                [predictor.predict_target(target, fresh.features) for predictor in each]
            ),
        }
        for depth, (low, high) in QUEUE_DEPTHS.items():
            rows = (waiting >= low) & (waiting <= (np.inf if high is None else high))
            for way, predicted in ways.items():
                results.append(
                    {
                        "target": target,
                        "queue": depth,
                        "pods": int(rows.sum()),
                        "way": way,
                        "coverage": coverage(predicted[rows], actual[rows]),
                    }
                )
    return results


def report(results: dict[str, list[dict[str, Any]]]) -> str:
    """The three measurements as Markdown tables."""
    heads = " | ".join(f"p{alpha * 100:g}" for alpha in QUANTILES)
    rule = "|---|---|" + "---:|" * len(QUANTILES)
    lines = [f"| regime | target | {heads} |", rule]
    lines += [
        f"| {row['regime']} | {row['target']} | " + " | ".join(f"{c:.3f}" for c in row["coverage"]) + " |"
        for row in results["regimes"]
    ]
    lines += ["", f"| noise | target | {heads} |", rule]
    by_noise: dict[tuple[str, str], list[str]] = {}
    for row in results["small"]:
        by_noise.setdefault((row["noise"], row["target"]), []).append(f"{row['mean']:.3f} / {row['max']:.3f}")
    lines += [
        f"| {noise} | {target} | " + " | ".join(cells) + " |" for (noise, target), cells in by_noise.items()
    ]
    lines += [
        "",
        f"| target | queue | pods | way | {heads} |",
        "|---|---|---:|---|" + "---:|" * len(QUANTILES),
    ]
    lines += [
        f"| {row['target']} | {row['queue']} | {row['pods']} | {row['way']} | "
        + " | ".join(f"{c:.3f}" for c in row["coverage"])
        + " |"
        for row in results["within_fleet"]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements, print the tables, and write the JSON when ``--out`` names a file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=12, help="small data sets per noise kind")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = {"regimes": regimes(), "small": small(args.draws), "within_fleet": within_fleet()}
    print(report(results))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
