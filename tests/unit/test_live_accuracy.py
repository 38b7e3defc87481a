"""Live accuracy in process: the window's figures, regimes, the drift rule, a model swap, falling behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import numpy as np
import pytest
from prometheus_client import REGISTRY

from podlatency.bundle import ModelBundle
from podlatency.engines.predictor import LoadedModel, ModelHolder, Predictor
from podlatency.learning.live_accuracy import (
    QUEUE_ROWS,
    Figures,
    LiveAccuracy,
    regime_label,
    regimes_of,
)
from podlatency.learning.samples import REGIMES, SampleStore, regime_index, regime_of
from podlatency.learning.training import TrainingOptions, train_bundle
from podlatency.learning.workload import router_observations
from podlatency.schema import ObservedSample, feature_matrix


def rows_of(raw: list[dict[str, object]]) -> list[ObservedSample]:
    return msgspec.convert(raw, list[ObservedSample])


def router_trained(objective: str, tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    """A model trained, as a trainer would, on router-shaped rows of the synthetic fleet."""
    store = SampleStore(tmp_path_factory.mktemp("samples"), per_bucket=2000)
    store.add(rows_of(router_observations(6000, seed=1)))
    options = TrainingOptions(objective=objective, quantile_alpha=0.9)
    return train_bundle(store.training_set(), options, source="router rows")


@pytest.fixture(scope="module")
def mean_bundle(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    return router_trained("mean", tmp_path_factory)


@pytest.fixture(scope="module")
def quantile_bundle(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    return router_trained("quantile", tmp_path_factory)


def serving(bundle: ModelBundle) -> ModelHolder:
    holder = ModelHolder()
    holder.swap(LoadedModel(Predictor(bundle, "cpu", nthread=1)))
    return holder


@pytest.fixture
def drifts() -> list[tuple[str, str]]:
    return []


@contextmanager
def live_for(
    holder: ModelHolder, drifts: list[tuple[str, str]], window: int = 3000
) -> Iterator[LiveAccuracy]:
    """A started scorer over ``holder``'s model that notes each drift in ``drifts``."""
    live = LiveAccuracy(holder, window=window, drift_min_rows=500, on_drift=lambda *args: drifts.append(args))
    live.start()
    yield live
    live.stop()


def feed(live: LiveAccuracy, raw: list[dict[str, object]], batch: int = 1000) -> None:
    rows = rows_of(raw)
    for start in range(0, len(rows), batch):
        live.submit(rows[start : start + batch])
    assert live.wait_scored()


def test_figures_are_the_documented_measures() -> None:
    predicted, actual = np.array([10.0, 20.0, 30.0, 40.0]), np.array([20.0, 20.0, 20.0, 20.0])
    figures = Figures.of(predicted, actual, alpha=0.9)
    assert figures.rows == 4
    assert figures.median_relative_error == pytest.approx(0.5)  # |errors| / 20 = 0.5, 0, 0.5, 1
    assert figures.mae_ms == pytest.approx(10.0)
    assert figures.coverage == pytest.approx(0.75)  # actual <= predicted for 20, 30, 40
    # pinball: errors (actual - predicted) 10, 0, -10, -20 -> 0.9*10, 0, 0.1*10, 0.1*20
    assert figures.pinball_loss == pytest.approx((9.0 + 0 + 1.0 + 2.0) / 4)
    assert Figures.of(predicted, actual, alpha=None).coverage is None


def test_regimes_are_numbered_as_the_sample_store_numbers_them() -> None:
    rows = rows_of(router_observations(2000, seed=3))
    expected = [regime_index(regime_of(row)) for row in rows]
    assert regimes_of(feature_matrix(rows)).tolist() == expected
    assert len({regime_label(index) for index in range(REGIMES)}) == REGIMES
    assert regime_label(0) == "waiting 0, kv <0.5, prefix 0"


@pytest.mark.parametrize("objective", ["mean", "quantile"])
def test_a_stationary_fleet_never_drifts(
    objective: str, mean_bundle: ModelBundle, quantile_bundle: ModelBundle, drifts: list[tuple[str, str]]
) -> None:
    """20,000 fresh rows of the fleet the model learned: no drift, and figures near the training ones."""
    bundle = mean_bundle if objective == "mean" else quantile_bundle
    with live_for(serving(bundle), drifts) as live:
        for seed in range(10, 20):
            feed(live, router_observations(1000, seed=seed))  # 2,000 rows each
        report = live.report()
    assert drifts == []
    assert report.model_version == bundle.version
    for target, figures in report.targets.items():
        assert not figures.drift, (target, figures.drift_reason)
        assert figures.scored == 10_000, "every observed row of its target, TTFT and TPOT rows apart"
        assert figures.window is not None
        assert figures.window.rows == 3000, "the window's size"
        trained = figures.training["median_relative_error"]
        assert figures.window.median_relative_error < 1.5 * trained + 0.05
        if objective == "quantile":
            assert figures.window.coverage is not None
            assert abs(figures.window.coverage - 0.9) < 0.05
        assert figures.by_regime, "regimes with enough rows are reported"
        assert sum(regime.rows for regime in figures.by_regime.values()) <= 3000


@pytest.mark.parametrize("objective", ["mean", "quantile"])
def test_latencies_that_double_are_flagged_within_a_bounded_number_of_rows(
    objective: str, mean_bundle: ModelBundle, quantile_bundle: ModelBundle, drifts: list[tuple[str, str]]
) -> None:
    """After a full window of the learned fleet, doubled latencies are flagged within half a window.

    The median moves once half the window is new rows; a quantile model's coverage falls much sooner.
    """
    bundle = mean_bundle if objective == "mean" else quantile_bundle
    window, batch = 3000, 100  # requests per batch: 100 rows per target
    flagged_after: dict[str, int] = {}
    with live_for(serving(bundle), drifts, window=window) as live:
        feed(live, router_observations(window, seed=30))
        assert drifts == []
        for step in range(1, 31):
            feed(live, router_observations(batch, seed=100 + step, slowdown=2.0))
            for target, _ in drifts:
                flagged_after.setdefault(target, step * batch)
            if len(flagged_after) == 2:
                break
        report = live.report()
    assert len(drifts) == 2, "each target flagged, once"
    bound = window // 2 + batch if objective == "mean" else window // 5
    assert max(flagged_after.values()) <= bound, flagged_after
    for target in ("ttft", "tpot"):
        assert report.targets[target].drift
        reason = report.targets[target].drift_reason or ""
        assert "median relative error" in reason or "coverage" in reason
    assert REGISTRY.get_sample_value("podlatency_drift", {"target": "ttft"}) == 1
    print(f"{objective}: drift flagged after {flagged_after} rows per target")


def test_a_ttft_only_shift_flags_ttft_alone(mean_bundle: ModelBundle, drifts: list[tuple[str, str]]) -> None:
    shifted: list[dict[str, Any]] = []
    for row in router_observations(1500, seed=40):
        shifted.append(row | {"actual_ttft_ms": 2.5 * float(row["actual_ttft_ms"])})  # type: ignore[arg-type]
    with live_for(serving(mean_bundle), drifts) as live:
        feed(live, router_observations(1000, seed=41))
        feed(live, shifted, batch=250)
        report = live.report()
    assert [target for target, _ in drifts] == ["ttft"]
    assert report.targets["ttft"].drift
    assert not report.targets["tpot"].drift


def test_a_model_coming_into_service_starts_its_own_window(
    mean_bundle: ModelBundle, quantile_bundle: ModelBundle, drifts: list[tuple[str, str]]
) -> None:
    holder = serving(mean_bundle)
    with live_for(holder, drifts) as live:
        feed(live, router_observations(1000, seed=50, slowdown=2.0))
        assert live.report().targets["ttft"].drift
        holder.swap(LoadedModel(Predictor(quantile_bundle, "cpu", nthread=1)))
        feed(live, router_observations(300, seed=51))
        report = live.report()
    assert report.model_version == quantile_bundle.version
    assert report.targets["ttft"].scored == 300, "only rows scored against the new model"
    assert not report.targets["ttft"].drift, "the old model's drift is not the new one's"
    assert report.targets["ttft"].window is not None
    assert report.targets["ttft"].window.coverage is not None, "quantile figures for a quantile model"


def test_rows_are_never_held_up_when_the_scorer_is_behind_or_absent(mean_bundle: ModelBundle) -> None:
    """Past QUEUE_ROWS waiting rows, without a scorer or a model, submit returns at once: rows unscored."""
    live = LiveAccuracy(serving(mean_bundle), window=1000, drift_min_rows=100)
    release = threading.Event()
    live._score = lambda model, rows: release.wait(10)  # type: ignore[method-assign,assignment]
    live.start()
    rows = rows_of(router_observations(5000, seed=60))  # 10,000 rows a request
    requests = QUEUE_ROWS // len(rows) + 1  # rows being scored count until they are done
    started = time.monotonic()
    for _ in range(requests):
        live.submit(rows)
    assert time.monotonic() - started < 1.0, "submitting never waits for the scorer"
    assert live.report().unscored_rows == len(rows), "one request past the bound"
    release.set()
    live.stop()

    not_started = LiveAccuracy(serving(mean_bundle), window=1000, drift_min_rows=100)
    not_started.submit(rows[:10])
    nothing_served = LiveAccuracy(ModelHolder(), window=1000, drift_min_rows=100)
    nothing_served.start()
    nothing_served.submit(rows[:10])
    nothing_served.stop()
    assert not_started.report().unscored_rows == nothing_served.report().unscored_rows == 10
