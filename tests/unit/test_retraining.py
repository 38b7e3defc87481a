"""Retraining from observed samples: per target, like with like, publishing only what is not worse."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import msgspec

from podlatency.bundle import ModelBundle
from podlatency.learning.retraining import Retrainer, RetrainPolicy
from podlatency.learning.samples import SampleStore
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.learning.workload import generate, router_observations
from podlatency.metrics import service_metrics
from podlatency.prediction_service import PredictionService
from podlatency.registry import ModelRegistry
from podlatency.schema import ObservedSample
from podlatency.settings import Settings


def observed(count: int, seed: int, slowdown: float = 1.0) -> list[ObservedSample]:
    sample = generate(count, seed=seed, slowdown=slowdown)
    return [
        msgspec.convert(row | {"actual_ttft_ms": ttft, "actual_tpot_ms": tpot}, ObservedSample)
        for row, ttft, tpot in zip(
            sample.rows(), sample.ttft_ms.tolist(), sample.tpot_ms.tolist(), strict=True
        )
    ]


def router_rows(requests: int, seed: int) -> list[ObservedSample]:
    return [msgspec.convert(row, ObservedSample) for row in router_observations(requests, seed=seed)]


def service_on(tmp_path: Path, model_dir: Path) -> PredictionService:
    shutil.copytree(model_dir, tmp_path / "models")
    service = PredictionService(Settings(model_dir=tmp_path / "models", device="cpu"))
    service.bootstrap()
    return service


def test_waits_for_enough_new_samples(tmp_path: Path, model_dir: Path) -> None:
    """Below min_new_samples nothing is trained."""
    store = SampleStore(tmp_path / "samples")
    retrainer = Retrainer(
        service_on(tmp_path, model_dir), store, RetrainPolicy(min_new_samples=100), TrainingOptions()
    )
    store.add(observed(99, seed=1))
    outcome = retrainer.run_once()
    assert not outcome.published
    assert "99 new samples" in outcome.reason


def test_an_explicit_request_retrains_on_what_is_there(tmp_path: Path, model_dir: Path) -> None:
    """POST /v1/retrain ("request") does not wait for min_new_samples; each target still needs its rows."""
    store = SampleStore(tmp_path / "samples")
    retrainer = Retrainer(
        service_on(tmp_path, model_dir),
        store,
        RetrainPolicy(min_new_samples=10_000),
        TrainingOptions(rounds=20),
    )
    store.add(observed(100, seed=1))
    too_few = retrainer.run_once("request")
    assert "enough observed rows" in too_few.reason, too_few.reason
    store.add(observed(900, seed=5, slowdown=2.0))
    assert "waiting for 10000" in retrainer.run_once().reason
    outcome = retrainer.run_once("request")
    assert set(outcome.targets) == {"ttft", "tpot"}, outcome.reason
    assert "waiting" not in outcome.reason


def test_a_worse_candidate_is_not_published(
    tmp_path: Path, model_dir: Path, small_bundle: ModelBundle
) -> None:
    """A one-tree candidate loses to the active model on held-out samples and is not published."""
    service = service_on(tmp_path, model_dir)
    store = SampleStore(tmp_path / "samples")
    store.add(observed(3000, seed=2))
    retrainer = Retrainer(service, store, RetrainPolicy(min_new_samples=100), TrainingOptions(rounds=1))
    outcome = retrainer.run_once()
    assert not outcome.published
    assert "worse" in outcome.reason
    assert service.holder.current().version == small_bundle.version
    assert service.registry.active_version() == small_bundle.version


def test_a_better_candidate_is_published_and_served(
    tmp_path: Path, model_dir: Path, small_bundle: ModelBundle
) -> None:
    """When the fleet got twice as slow, the retrained model wins on held-out data and is swapped in.

    The attempt is counted, timed and its samples counted in the metrics the chart's alerts read.
    """
    service = service_on(tmp_path, model_dir)
    metrics = service_metrics()
    received = metrics.samples_received._value.get()
    published = metrics.retrains.labels("published", "samples")._value.get()
    store = SampleStore(tmp_path / "samples")
    store.add(observed(4000, seed=3, slowdown=2.0))
    assert metrics.samples_received._value.get() - received == 4000
    retrainer = Retrainer(
        service, store, RetrainPolicy(min_new_samples=100, keep_versions=1), TrainingOptions()
    )
    started = time.time()
    outcome = retrainer.run_once()
    assert metrics.retrains.labels("published", "samples")._value.get() - published == 1
    assert metrics.last_retrain._value.get() >= started
    assert metrics.model_ready._value.get() == 1
    assert outcome.published, outcome.reason
    assert outcome.measure == "mae_ms"
    assert outcome.candidate["ttft"] < outcome.active["ttft"]
    assert service.holder.current().version == outcome.version != small_bundle.version
    assert service.registry.active_version() == outcome.version
    assert service.registry.versions() == [outcome.version], "keep_versions=1 pruned the old one"
    gauge = service_metrics().holdout_error
    for measure in ("mae_ms", "mape"):
        assert gauge.labels(target="ttft", version=outcome.version, measure=measure)._value.get() > 0


def quantile_service(tmp_path: Path) -> tuple[PredictionService, ModelBundle]:
    """A service whose active model is a p90 model, with the default objective setting (auto)."""
    p90 = train_bundle(
        synthetic_training_set(3_000, seed=12), TrainingOptions(objective="quantile", rounds=30), "p90"
    )
    ModelRegistry(tmp_path / "models").save(p90)
    service = PredictionService(Settings(model_dir=tmp_path / "models", device="cpu"))
    service.bootstrap()
    return service, p90


def test_a_quantile_model_stays_a_quantile_model(tmp_path: Path) -> None:
    """With the objective setting at auto, a p90 model retrains into a p90 model, guarded by pinball loss."""
    service, p90 = quantile_service(tmp_path)
    store = SampleStore(tmp_path / "samples")
    store.add(router_rows(3_000, seed=13))
    retrainer = Retrainer(service, store, RetrainPolicy(min_new_samples=100), TrainingOptions())
    outcome = retrainer.run_once()
    assert outcome.published, outcome.reason
    assert (outcome.objective, outcome.quantile, outcome.measure) == ("quantile", 0.9, "pinball_loss")
    served = service.holder.current().bundle
    assert served.version == outcome.version != p90.version
    assert (served.objective, served.quantile_alpha) == ("quantile", 0.9)
    assert set(served.prediction_scale) == {"ttft", "tpot"}


def test_an_explicit_objective_change_is_published_without_comparison(tmp_path: Path) -> None:
    """PODLATENCY_OBJECTIVE=mean turns a p90 deployment into a mean one at the next retrain, and says why."""
    service, _ = quantile_service(tmp_path)
    store = SampleStore(tmp_path / "samples")
    store.add(router_rows(1_500, seed=14))
    retrainer = Retrainer(
        service, store, RetrainPolicy(min_new_samples=100), TrainingOptions(), objective="mean"
    )
    outcome = retrainer.run_once()
    assert outcome.published, outcome.reason
    assert "p90 quantile model" in outcome.reason
    assert "without comparison" in outcome.reason
    assert service.holder.current().bundle.objective == "mean"


def test_a_target_without_rows_keeps_the_active_booster(
    tmp_path: Path, model_dir: Path, small_bundle: ModelBundle
) -> None:
    """A fleet that never streams sends TTFT rows only: TTFT is retrained, TPOT keeps the active booster."""
    service = service_on(tmp_path, model_dir)
    store = SampleStore(tmp_path / "samples")
    store.add(
        [msgspec.convert(row, ObservedSample) for row in router_observations(3_000, 15, streamed_share=0)]
    )
    retrainer = Retrainer(service, store, RetrainPolicy(min_new_samples=100), TrainingOptions())
    outcome = retrainer.run_once()
    assert outcome.published, outcome.reason
    assert "keeps the active model" in outcome.targets["tpot"]
    served = service.holder.current().bundle
    assert served.boosters["tpot"].save_raw("ubj") == small_bundle.boosters["tpot"].save_raw("ubj")
    assert served.boosters["ttft"].save_raw("ubj") != small_bundle.boosters["ttft"].save_raw("ubj")


def test_a_model_fitted_on_milliseconds_is_replaced_without_comparison(tmp_path: Path) -> None:
    """A bundle from before the load order (no logs, no constraints) is superseded whole, and says why.

    Its targets cannot be mixed with new ones (a bundle's boosters share one output scale), so the
    next retrain publishes a complete new model, monotone in load, instead of comparing per target.
    """
    fitted_on_ms = TrainingOptions(rounds=30, log_latency=False, monotone=False, load_trend=False)
    older = train_bundle(synthetic_training_set(3_000, seed=12), fitted_on_ms, "older")
    assert not older.log_latency
    assert not older.load_trend
    ModelRegistry(tmp_path / "models").save(older)
    service = PredictionService(Settings(model_dir=tmp_path / "models", device="cpu"))
    service.bootstrap()
    store = SampleStore(tmp_path / "samples")
    store.add(router_rows(1_500, seed=14))
    outcome = Retrainer(service, store, RetrainPolicy(min_new_samples=100), TrainingOptions()).run_once()
    assert outcome.published, outcome.reason
    assert "fitted on milliseconds" in outcome.reason
    assert "without comparison" in outcome.reason
    served = service.holder.current().bundle
    assert served.log_latency
    assert set(served.load_trend) == {"ttft", "tpot"}
