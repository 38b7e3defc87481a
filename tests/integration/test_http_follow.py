"""A predictor that follows a trainer over HTTP (``PODLATENCY_FOLLOW_URL``): two real server processes."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from measure.servers import free_port
from podlatency.bundle import ModelBundle
from podlatency.engines.predictor import Predictor
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.learning.workload import pod_rows
from podlatency.registry import ModelRegistry
from podlatency.schema import PodMetrics, feature_matrix

FOLLOWING = {
    "PODLATENCY_ROLE": "predictor",
    "PODLATENCY_WATCH_INTERVAL_S": "0.2",
    "PODLATENCY_ENGINE": "xgboost",
}


@pytest.fixture(scope="module")
def next_bundle() -> ModelBundle:
    """A second model for the trainer to publish: a quantile set, so the predictor's answers change shape."""
    options = TrainingOptions(objective="quantile", quantiles=(0.5, 0.99), rounds=20)
    return train_bundle(synthetic_training_set(3_000, seed=9), options, source="next")


def served_version(server: Any, version: str, timeout: float = 20.0) -> None:
    """Wait until ``server`` serves ``version``."""
    deadline = time.monotonic() + timeout
    while server.request("GET", "/readyz").json().get("model_version") != version:
        assert time.monotonic() < deadline, f"never served {version}: {server.log()[-2000:]}"
        time.sleep(0.1)


def activated(folder: Path, version: str, timeout: float = 5.0) -> bool:
    """Whether ``folder``'s ACTIVE comes to name ``version`` (it is written just after the swap)."""
    deadline = time.monotonic() + timeout
    while ModelRegistry(folder).active_version() != version:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def failed_rollouts(server: Any) -> float:
    metrics = server.request("GET", "/metrics").body.decode()
    found = re.search(r'podlatency_model_rollouts_total\{outcome="failed"\} ([0-9.]+)', metrics)
    return float(found.group(1)) if found else 0.0


def test_a_predictor_follows_its_trainer_over_http(
    tmp_path: Path, model_dir: Path, next_bundle: ModelBundle, start_server: Any
) -> None:
    """An empty predictor serves the trainer's active version, then the next one it publishes.

    Each is downloaded into the predictor's own folder, checked and activated there; the predictor
    answers as the trainer does, and serves the new model's quantiles.
    """
    trainer_folder = tmp_path / "trainer"
    shutil.copytree(model_dir, trainer_folder)
    trainer = start_server(trainer_folder, PODLATENCY_ROLE="trainer", PODLATENCY_RETRAIN_INTERVAL_S="0")
    first = ModelRegistry(trainer_folder).active_version()
    assert first is not None
    predictor_folder = tmp_path / "predictor"
    predictor = start_server(predictor_folder, PODLATENCY_FOLLOW_URL=trainer.url, **FOLLOWING)
    served_version(predictor, first)
    assert activated(predictor_folder, first)

    ModelRegistry(trainer_folder).save(next_bundle)  # what a trainer's publish does to its folder
    served_version(predictor, next_bundle.version)
    assert activated(predictor_folder, next_bundle.version)
    rows = pod_rows(5, seed=4)
    answer = predictor.request("POST", "/v1/predict", {"pods": rows, "quantiles": [0.5, 0.99]})
    assert answer.status == 200, answer.body
    expected = Predictor(next_bundle, "cpu", nthread=1).predict_all(
        feature_matrix([msgspec.convert(row, PodMetrics) for row in rows])
    )
    predictions = answer.json()["predictions"]
    assert [p["ttft_ms"] for p in predictions] == pytest.approx(expected["ttft"].tolist(), rel=1e-9)
    assert all(set(p["quantiles"]) == {"0.5", "0.99"} for p in predictions)
    bulk = predictor.request("POST", "/predict/bulk/strict", {"requests": rows}).json()["predictions"]
    assert all(len(p["ttft_prediction_bounds"]) == 2 for p in bulk)


def test_an_unreachable_or_broken_trainer_leaves_the_model_serving(
    tmp_path: Path, model_dir: Path, next_bundle: ModelBundle, start_server: Any
) -> None:
    """Trainer down: the predictor serves its own stored model and says so once.

    A corrupt download is refused once (counted, not fetched again every interval); the trainer's next
    good version is served.
    """
    port = free_port()
    predictor_folder = tmp_path / "predictor"
    shutil.copytree(model_dir, predictor_folder)
    own = ModelRegistry(predictor_folder).active_version()
    assert own is not None
    predictor = start_server(predictor_folder, PODLATENCY_FOLLOW_URL=f"http://127.0.0.1:{port}", **FOLLOWING)
    served_version(predictor, own)
    time.sleep(1.0)  # five intervals without a trainer
    assert predictor.log().count("cannot follow the trainer") == 1, predictor.log()

    trainer_folder = tmp_path / "trainer"
    shutil.copytree(model_dir, trainer_folder)
    registry = ModelRegistry(trainer_folder)
    registry.save(next_bundle)
    (registry.bundle_dir(next_bundle.version) / "ttft.ubj").write_bytes(b"truncated")
    start_server(trainer_folder, port=port, PODLATENCY_ROLE="trainer", PODLATENCY_RETRAIN_INTERVAL_S="0")
    deadline = time.monotonic() + 20
    while failed_rollouts(predictor) < 1:
        assert time.monotonic() < deadline, predictor.log()[-2000:]
        time.sleep(0.1)
    time.sleep(1.0)  # five more intervals
    assert failed_rollouts(predictor) == 1, "a failed version is not fetched again"
    assert predictor.request("GET", "/readyz").json()["model_version"] == own
    assert "the trainer at" in predictor.log()
    assert next_bundle.version not in ModelRegistry(predictor_folder).versions()

    fixed = train_bundle(synthetic_training_set(3_000, seed=10), TrainingOptions(rounds=20), source="fixed")
    registry.save(fixed)
    served_version(predictor, fixed.version)
