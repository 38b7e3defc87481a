"""How well quantile models hold their quantile across the range of load, over many small data sets.

    python -m measure.calibration --draws 12

Each draw is a small deployment that sits in one regime (``workload.single_regime_observations``:
3,000 requests, latency growing with tokens in flight, Gaussian or log-normal noise), kept in a
``SampleStore`` and trained into a p90 model as a trainer would. Coverage is measured on 20,000 fresh
requests of the same kind in each quarter of the tokens-in-flight range; the report is each draw's
worst quarter, as its distance from the quantile, per target and noise.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from podlatency.bundle import ModelBundle
from podlatency.engines.predictor import Predictor
from podlatency.learning.samples import SampleStore, actual_ms
from podlatency.learning.training import TrainingOptions, train_bundle
from podlatency.learning.workload import single_regime_observations
from podlatency.schema import TARGETS, ObservedSample, feature_matrix

ALPHA = 0.9


def coverage_by_quarter(
    bundle: ModelBundle, rows: list[dict[str, object]], in_flight: npt.NDArray[np.float64]
) -> dict[str, list[float]]:
    """Per target, the share of actuals at or below the prediction in each quarter of tokens in flight.

    ``rows`` alternate TTFT and TPOT rows of the same requests, as ``single_regime_observations`` writes.
    """
    samples = [msgspec.convert(row, ObservedSample) for row in rows]
    quarters = np.digitize(in_flight, np.quantile(in_flight, [0.25, 0.5, 0.75]))
    predictor = Predictor(bundle, "cpu", nthread=1)
    coverage: dict[str, list[float]] = {}
    for offset, target in enumerate(TARGETS):
        observed = samples[offset::2]
        actual = np.array([actual_ms(sample, target) for sample in observed])
        estimate = predictor.predict_target(target, feature_matrix(observed))
        coverage[target] = [
            float(np.mean(actual[quarters == quarter] <= estimate[quarters == quarter]))
            for quarter in range(4)
        ]
    return coverage


def worst_quarters(seed: int, noise: str) -> dict[str, float]:
    """One draw: train a p90 model as a trainer would, and each target's worst quarter's distance from p90."""
    rows, _ = single_regime_observations(3_000, seed=seed, noise=noise)
    with tempfile.TemporaryDirectory() as folder:
        store = SampleStore(Path(folder))
        store.add([msgspec.convert(row, ObservedSample) for row in rows])
        bundle = train_bundle(
            store.training_set(), TrainingOptions(objective="quantile", quantile_alpha=ALPHA), "d"
        )
    fresh, in_flight = single_regime_observations(20_000, seed=10_000 + seed, noise=noise)
    return {
        target: max(abs(covered - ALPHA) for covered in quarters)
        for target, quarters in coverage_by_quarter(bundle, fresh, in_flight).items()
    }


def main() -> None:
    """Run the draws and print the spread."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=12, help="data sets per noise kind")
    args = parser.parse_args()
    for noise in ("gaussian", "lognormal"):
        worst = [worst_quarters(seed, noise) for seed in range(args.draws)]
        for target in TARGETS:
            values = [draw[target] for draw in worst]
            print(
                f"{noise:9} {target}: worst quarter's distance from p90 over {args.draws} draws: "
                f"mean {statistics.mean(values):.3f}, max {max(values):.3f}"
            )


if __name__ == "__main__":
    main()
