"""Predictions a router can rank: monotone in load, and apart for pods whose load differs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from measure.load_order import monotone_violations, predictors, router_training_set, separated_share
from podlatency.bundle import ModelBundle, load_bundle
from podlatency.engines.predictor import Predictor
from podlatency.errors import ModelLoadError
from podlatency.learning import workload
from podlatency.learning.load_order import MONOTONE_FEATURES, monotone_constraints
from podlatency.learning.training import TrainingOptions, TrainingSet, train_bundle
from podlatency.registry import ModelRegistry
from podlatency.schema import FEATURE_NAMES, MAX_COUNT, RAW_FEATURES, TARGETS

FLEET = workload.fleet_decisions(1_000, seed=21)
PODS = workload.generate(300, seed=22).features


@pytest.fixture(scope="module")
def quantile_bundle() -> ModelBundle:
    options = TrainingOptions(rounds=50, objective="quantile", quantile_alpha=0.9)
    return train_bundle(workload_rows(5_000, seed=1), options, source="test")


@pytest.fixture(scope="module")
def router_bundles() -> dict[str, ModelBundle]:
    """Both objectives retrained on router-shaped rows (TTFT-only and TPOT-only, no decode tokens)."""
    data = router_training_set(2_000, seed=13)
    return {
        objective: train_bundle(data, TrainingOptions(rounds=80, objective=objective), source="router")
        for objective in ("mean", "quantile")
    }


def workload_rows(samples: int, seed: int) -> TrainingSet:
    sample = workload.generate(samples, seed=seed)
    return TrainingSet.from_observations(sample.features, {"ttft": sample.ttft_ms, "tpot": sample.tpot_ms})


def apart(bundle: ModelBundle) -> dict[str, float]:
    predict = predictors(bundle)
    flat = np.ascontiguousarray(FLEET.reshape(-1, FLEET.shape[-1]))
    return {
        target: separated_share(predict[target](flat).reshape(FLEET.shape[:2]), FLEET) for target in TARGETS
    }


def test_every_monotone_feature_is_a_feature_with_a_direction() -> None:
    """The directions name real columns, and XGBoost gets one per column in order."""
    for target, directions in MONOTONE_FEATURES.items():
        assert set(directions) <= set(FEATURE_NAMES), target
        assert set(directions.values()) <= {-1, 1}, target
        constraints = monotone_constraints(target).strip("()").split(",")
        assert len(constraints) == len(FEATURE_NAMES)
        assert constraints[FEATURE_NAMES.index("num_request_running")] == "1"
        assert constraints[FEATURE_NAMES.index("pod_type_code")] == "0"
    assert MONOTONE_FEATURES["ttft"]["prefix_cache_score"] == -1


@pytest.mark.parametrize("objective", ["mean", "quantile"])
def test_raising_load_never_lowers_a_prediction(
    objective: str, small_bundle: ModelBundle, quantile_bundle: ModelBundle
) -> None:
    """Raising any monotone feature never moves a prediction against its direction.

    For random pods, by small and large steps; both objectives, on XGBoost (the compiled engine:
    test_compiled.py).
    """
    bundle = small_bundle if objective == "mean" else quantile_bundle
    assert bundle.objective == objective
    assert monotone_violations(predictors(bundle), PODS) == dict.fromkeys(TARGETS, 0)


@pytest.mark.parametrize("objective", ["mean", "quantile"])
def test_pods_whose_load_differs_are_predicted_apart(
    objective: str, small_bundle: ModelBundle, quantile_bundle: ModelBundle
) -> None:
    """At least 95% of decisions keep every two candidates whose load differs apart.

    On a balanced synthetic fleet (near-ties), for both targets.
    """
    bundle = small_bundle if objective == "mean" else quantile_bundle
    for target, share in apart(bundle).items():
        assert share >= 0.95, (target, share)


def test_without_the_load_trend_the_same_fleet_ties() -> None:
    """The fleet is a fair test: constrained trees without the load trend tie in many decisions."""
    options = TrainingOptions(rounds=50, objective="quantile", load_trend=False)
    bundle = train_bundle(workload_rows(5_000, seed=1), options, source="test")
    assert not bundle.load_trend
    assert min(apart(bundle).values()) < 0.9


@pytest.mark.parametrize("objective", ["mean", "quantile"])
def test_both_hold_after_retraining_on_router_shaped_rows(
    objective: str, router_bundles: dict[str, ModelBundle]
) -> None:
    """Trained on what the llm-d router sends, a model is still monotone and keeps pods apart."""
    bundle = router_bundles[objective]
    assert "decode_tokens_in_flight" not in bundle.load_trend["ttft"], "the router never varied it"
    assert monotone_violations(predictors(bundle), PODS) == dict.fromkeys(TARGETS, 0)
    for target, share in apart(bundle).items():
        assert share >= 0.95, (target, share)


def test_the_load_trend_stays_small_and_finite_far_outside_the_training_range(
    small_bundle: ModelBundle,
) -> None:
    """Far beyond the training rows the trend flattens, and predictions stay finite.

    Any one feature, from 0 to the largest value allowed, moves the trend by under 25% (it grows with
    log1p of the feature); a pod with every count at that value still gets a finite prediction.
    """
    fractions = {"kv_cache_percentage", "prefix_cache_score"}
    for target, slopes in small_bundle.load_trend.items():
        for name, slope in slopes.items():
            largest = 1.0 if name in fractions else MAX_COUNT
            assert abs(slope) * np.log1p(largest) < np.log(1.25), (target, name)
    rows = np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32)
    for name in RAW_FEATURES:
        rows[0, FEATURE_NAMES.index(name)] = (
            1.0 if name in {"kv_cache_percentage", "prefix_cache_score"} else MAX_COUNT
        )
    rows[0, FEATURE_NAMES.index("pod_type_code")] = 0.0
    for target in TARGETS:
        assert np.isfinite(Predictor(small_bundle, "cpu", nthread=1).predict_target(target, rows)).all()


def test_the_trend_and_logs_travel_with_the_bundle_and_decide_its_version(
    small_bundle: ModelBundle, tmp_path: Path
) -> None:
    """Saved and loaded, a bundle predicts the same; without its trend it is another version."""
    registry = ModelRegistry(tmp_path)
    registry.save(small_bundle)
    loaded = load_bundle(registry.bundle_dir(small_bundle.version))
    assert loaded.log_latency
    assert loaded.load_trend == small_bundle.load_trend
    rows = np.ascontiguousarray(PODS[:50])
    for target in TARGETS:
        np.testing.assert_array_equal(
            Predictor(loaded, "cpu", 1).predict_target(target, rows),
            Predictor(small_bundle, "cpu", 1).predict_target(target, rows),
        )
    stripped = ModelBundle.create(
        small_bundle.boosters, objective="mean", quantile_alpha=None, metrics={}, trained_at="",
        training_rows=0, source="test", log_latency=True,
    )  # fmt: skip
    assert stripped.version != small_bundle.version


@pytest.mark.parametrize(
    ("load_trend", "log_latency", "named"),
    [
        ({"ttft": {"no_such_feature": 0.1}}, True, "ttft.no_such_feature"),
        ({"ttft": {"num_request_running": "many"}}, True, "load_trend"),
        ({"ttft": {"num_request_running": 0.1}}, "yes", "log_latency"),
    ],
)
def test_a_bundle_with_a_bad_trend_or_log_flag_is_refused_by_name(
    small_bundle: ModelBundle, tmp_path: Path, load_trend: object, log_latency: object, named: str
) -> None:
    """A tampered metadata.json is a ModelLoadError that names the bad field."""
    folder = small_bundle.save(tmp_path / "bundle")
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata |= {"load_trend": load_trend, "log_latency": log_latency}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match=named):
        load_bundle(folder)
