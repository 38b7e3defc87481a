"""Retraining from observed samples publishes a candidate only when it is not worse on held-out data."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
from opentelemetry.sdk.trace import TracerProvider

from podlatency.bundle import ModelBundle
from podlatency.dataplane import PredictionService
from podlatency.metrics import service_metrics
from podlatency.retraining import Retrainer, RetrainPolicy
from podlatency.samples import ObservedSample, SampleStore
from podlatency.settings import Settings
from podlatency.training import TrainingOptions
from podlatency.workload import generate


def observed(count: int, seed: int, slowdown: float = 1.0) -> list[ObservedSample]:
    sample = generate(count, seed=seed, slowdown=slowdown)
    return [
        msgspec.convert(row | {"actual_ttft_ms": ttft, "actual_tpot_ms": tpot}, ObservedSample)
        for row, ttft, tpot in zip(
            sample.rows(), sample.ttft_ms.tolist(), sample.tpot_ms.tolist(), strict=True
        )
    ]


def service_on(tmp_path: Path, model_dir: Path) -> PredictionService:
    shutil.copytree(model_dir, tmp_path / "models")
    service = PredictionService(
        Settings(model_dir=tmp_path / "models", device="cpu"), TracerProvider().get_tracer("test")
    )
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
    """When the fleet got twice as slow, the retrained model wins on held-out data and is swapped in."""
    service = service_on(tmp_path, model_dir)
    store = SampleStore(tmp_path / "samples")
    store.add(observed(4000, seed=3, slowdown=2.0))
    retrainer = Retrainer(
        service, store, RetrainPolicy(min_new_samples=100, keep_versions=1), TrainingOptions()
    )
    outcome = retrainer.run_once()
    assert outcome.published, outcome.reason
    assert outcome.candidate_mae is not None
    assert outcome.active_mae is not None
    assert outcome.candidate_mae["ttft"] < outcome.active_mae["ttft"]
    assert service.holder.current().version == outcome.version != small_bundle.version
    assert service.registry.active_version() == outcome.version
    assert service.registry.versions() == [outcome.version], "keep_versions=1 pruned the old one"
    gauge = service_metrics().holdout_error
    for measure in ("mae_ms", "mape"):
        assert gauge.labels(target="ttft", version=outcome.version, measure=measure)._value.get() > 0
