"""The model-folder watcher: swaps in what ACTIVE names, and survives a broken version."""

from __future__ import annotations

import shutil
from pathlib import Path

from podlatency.bundle import ModelBundle
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.metrics import service_metrics
from podlatency.prediction_service import PredictionService
from podlatency.settings import Settings
from podlatency.watcher import ActiveVersionWatcher


def test_broken_version_keeps_the_current_one_then_a_good_one_is_swapped_in(
    tmp_path: Path, model_dir: Path, small_bundle: ModelBundle
) -> None:
    """A corrupt active version is refused once (counted, not retried); the next good one is served."""
    shutil.copytree(model_dir, tmp_path / "models")
    service = PredictionService(Settings(model_dir=tmp_path / "models", device="cpu"))
    service.bootstrap()
    watcher = ActiveVersionWatcher(service, interval_s=0)
    assert not watcher.check_once(), "nothing new yet"

    broken = train_bundle(synthetic_training_set(2000, seed=21), TrainingOptions(rounds=5), "broken")
    service.registry.save(broken)
    service.registry.booster_file(broken.version, "ttft").write_bytes(b"not a model")
    failures = service_metrics().model_load_failures
    before = failures._value.get()
    assert not watcher.check_once()
    assert not watcher.check_once()
    assert failures._value.get() - before == 1
    assert service.holder.current().version == small_bundle.version

    good = train_bundle(synthetic_training_set(2000, seed=22), TrainingOptions(rounds=5), "good")
    service.registry.save(good)
    assert watcher.check_once()
    assert service.holder.current().version == good.version
