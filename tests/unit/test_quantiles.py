"""A quantile model serves a set of quantiles: one booster per target, calibrated, never crossing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from podlatency.bundle import ModelBundle, load_bundle
from podlatency.engines.compiled import check_matrix
from podlatency.engines.predictor import Predictor
from podlatency.errors import ModelLoadError
from podlatency.learning import workload
from podlatency.learning.retraining import worse_than
from podlatency.learning.training import TrainingOptions, TrainingSet, synthetic_training_set, train_bundle
from podlatency.schema import TARGETS
from tests.unit.feature_rows import rows_at_every_bound

QUANTILES = (0.5, 0.9, 0.95, 0.99)


@pytest.fixture(scope="module")
def set_bundle() -> ModelBundle:
    """The default quantile set on 5,000 synthetic rows, quickly trained."""
    options = TrainingOptions(objective="quantile", quantiles=QUANTILES, rounds=60)
    return train_bundle(synthetic_training_set(5_000, seed=1), options, source="test")


def test_the_set_is_one_booster_per_target_with_a_value_per_quantile(set_bundle: ModelBundle) -> None:
    """Each target's booster gives one value per row and quantile, ascending, the primary in place."""
    assert set_bundle.quantiles == QUANTILES
    assert set_bundle.quantile_alpha == 0.9
    assert set_bundle.primary_output == 1
    predictor = Predictor(set_bundle, "cpu", nthread=1)
    rows = workload.generate(7, seed=3).features
    every = predictor.predict_timed(rows)[0]
    primary = predictor.predict_all(rows)
    for target in TARGETS:
        assert every[target].shape == (7, 4)
        np.testing.assert_array_equal(primary[target], every[target][:, 1])
        assert len(set_bundle.prediction_scale[target]) == 4


def test_quantiles_never_cross_on_random_rows_and_at_every_bound(set_bundle: ModelBundle) -> None:
    """For every row, p50 <= p90 <= p95 <= p99: random rows over each feature's whole range, and bounds."""
    predictor = Predictor(set_bundle, "cpu", nthread=1)
    rows = np.concatenate([check_matrix(set_bundle.boosters, None, seed=4), rows_at_every_bound()])
    for target in TARGETS:
        values = predictor.predict_quantiles(target, rows)
        assert np.all(np.isfinite(values))
        assert np.all(np.diff(values, axis=1) >= 0), f"{target}: quantiles cross"


@pytest.mark.parametrize("queued_share", [0.1, 0.4, 0.8])
def test_each_quantile_is_calibrated_in_several_load_regimes(queued_share: float) -> None:
    """A deployment in a light, a mixed or a heavy load regime: each quantile within 0.03 of its level.

    Trained on 16,000 of its observations, measured on 20,000 fresh ones of the same regime, both targets.
    """
    observed = workload.generate(16_000, seed=21, queued_share=queued_share)
    data = TrainingSet.from_observations(
        observed.features, {"ttft": observed.ttft_ms, "tpot": observed.tpot_ms}
    )
    bundle = train_bundle(data, TrainingOptions(objective="quantile", quantiles=QUANTILES), source="test")
    predictor = Predictor(bundle, "cpu", nthread=1)
    fresh = workload.generate(20_000, seed=22, queued_share=queued_share)
    for target, actual in (("ttft", fresh.ttft_ms), ("tpot", fresh.tpot_ms)):
        predicted = predictor.predict_quantiles(target, fresh.features)
        for column, alpha in enumerate(QUANTILES):
            coverage = float(np.mean(actual <= predicted[:, column]))
            assert abs(coverage - alpha) <= 0.03, f"{target} p{alpha * 100:g}: coverage {coverage:.3f}"
            assert abs(bundle.metrics[target][f"coverage@{alpha:g}"] - alpha) <= 0.03, "held-out figure"


def test_a_set_bundle_round_trips_and_says_which_quantiles_it_holds(
    tmp_path: Path, set_bundle: ModelBundle
) -> None:
    """Saved and loaded: same version and predictions; metadata lists the quantiles and a scale each."""
    folder = set_bundle.save(tmp_path / "set")
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["quantiles"] == list(QUANTILES)
    assert all(len(factors) == 4 for factors in metadata["prediction_scale"].values())
    assert metadata["metrics"]["ttft"]["holdout_rows"] == 1000, "a count, written as one (not 1000.0)"
    assert isinstance(metadata["metrics"]["ttft"]["holdout_rows"], int)
    loaded = load_bundle(folder)
    assert (loaded.version, loaded.quantiles) == (set_bundle.version, QUANTILES)
    rows = workload.generate(20, seed=5).features
    np.testing.assert_array_equal(
        Predictor(loaded, "cpu", 1).predict_quantiles("ttft", rows),
        Predictor(set_bundle, "cpu", 1).predict_quantiles("ttft", rows),
    )


def test_an_older_single_quantile_bundle_loads_as_before(tmp_path: Path) -> None:
    """A p90 bundle written before sets (no ``quantiles``, a scale per target) keeps its version, serves."""
    p90 = train_bundle(
        synthetic_training_set(3_000, seed=2), TrainingOptions(objective="quantile", rounds=20), source="old"
    )
    folder = p90.save(tmp_path / "p90")
    metadata = json.loads((folder / "metadata.json").read_text())
    del metadata["quantiles"]
    assert all(isinstance(factor, float) for factor in metadata["prediction_scale"].values())
    (folder / "metadata.json").write_text(json.dumps(metadata))
    loaded = load_bundle(folder)
    assert (loaded.version, loaded.quantiles, loaded.primary_output) == (p90.version, (0.9,), None)
    assert Predictor(loaded, "cpu", 1).predict_all(workload.generate(3, seed=1).features)["ttft"].shape == (
        3,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quantiles": [0.9, 0.5, 0.95, 0.99]}, "ascending"),
        ({"quantiles": [0.5, 0.9, 0.95, 1.0]}, "strictly between 0 and 1"),
        ({"quantiles": [0.5, 0.95, 0.99, 0.999]}, "do not hold quantile_alpha"),
        ({"quantiles": "p90"}, "not a list of numbers"),
        ({"prediction_scale": {"ttft": [1.0, 1.0], "tpot": [1.0, 1.0, 1.0, 1.0]}}, "one factor per quantile"),
        ({"quantiles": [0.5, 0.9, 0.99], "prediction_scale": {"ttft": [1.0] * 3}}, "values per row"),
    ],
)
def test_a_bundle_whose_quantiles_do_not_fit_is_refused(
    tmp_path: Path, set_bundle: ModelBundle, change: dict[str, object], message: str
) -> None:
    """Quantiles out of order or range, without the primary, or not matching the scales or boosters."""
    folder = set_bundle.save(tmp_path / "set")
    metadata = json.loads((folder / "metadata.json").read_text()) | change
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match=message):
        load_bundle(folder)


def test_the_publish_guard_compares_every_quantile() -> None:
    """A candidate worse at one quantile only (pinball loss, or coverage) loses; one as good wins."""
    options = TrainingOptions(objective="quantile", quantiles=QUANTILES)
    active = {"pinball_loss": 10.0} | {
        f"{measure}@{alpha:g}": value
        for alpha in QUANTILES
        for measure, value in (("pinball_loss", 10.0), ("coverage", alpha))
    }
    assert worse_than(dict(active), active, options, tolerance=0.05) == ""
    worse_tail = active | {"pinball_loss@0.99": 11.0}
    assert worse_than(worse_tail, active, options, 0.05) == "pinball_loss@0.99 more than 5% higher"
    off_median = active | {"coverage@0.5": 0.43}
    assert worse_than(off_median, active, options, 0.05) == "coverage@0.5 0.430 is further from 0.5"
