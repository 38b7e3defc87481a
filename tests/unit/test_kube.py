"""The rollout record, timings and failure paths of the Kubernetes loops that need no API server.

Everything that talks to an API server is tested against the emulator in
``tests/integration/test_kube_rollout.py``.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from kubernetes import client

from podlatency.cluster.configmap import PINNED_ANNOTATION, record_from
from podlatency.cluster.election import LeaseTimings
from podlatency.cluster.rollout import ClusterRollout
from podlatency.dataplane import PredictionService
from podlatency.errors import ClusterUnavailable, InvalidRollout, SettingsError
from podlatency.settings import Settings
from podlatency.training import TrainingOptions, synthetic_training_set, train_bundle


def configmap(data: dict[str, str] | None, annotations: dict[str, str] | None = None) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name="m", annotations=annotations), data=data)


def test_a_configmap_declares_a_record_or_nothing() -> None:
    """No version is no record; a version needs its sha256 and URL; the pin is read from the annotation."""
    assert record_from(configmap(None)) is None
    assert record_from(configmap({"version": " "})) is None
    with pytest.raises(InvalidRollout, match="without sha256 and url"):
        record_from(configmap({"version": "abc"}))
    declared = {"version": "abc", "sha256": "f" * 64, "url": "http://t/v1/models/abc/bundle"}
    record = record_from(configmap(declared, {PINNED_ANNOTATION: "True"}))
    assert record is not None
    assert (record.version, record.pinned) == ("abc", True)
    unpinned = record_from(configmap(declared, {PINNED_ANNOTATION: "no"}))
    assert unpinned is not None
    assert not unpinned.pinned


@pytest.mark.parametrize(("duration", "deadline", "retry"), [(15, 10, 0), (15, 2, 2), (10, 10, 2)])
def test_timings_the_client_would_exit_on_are_refused(duration: int, deadline: int, retry: int) -> None:
    """kubernetes.leaderelection calls sys.exit on these; we refuse them as settings errors first."""
    with pytest.raises(SettingsError, match="PODLATENCY_LEASE_"):
        LeaseTimings(duration, deadline, retry).validate()
    LeaseTimings().validate()


def test_publishing_without_an_api_server_keeps_the_model_and_says_so(
    tmp_path: Path, model_dir: Path
) -> None:
    """An unreachable API server is a 503-class error naming the ConfigMap; the candidate stays stored."""
    shutil.copytree(model_dir, tmp_path / "models")
    settings = Settings(model_dir=tmp_path / "models", device="cpu", rollout_configmap="pl-model")
    service = PredictionService(settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    configuration = client.Configuration(host=f"http://127.0.0.1:{closed_port}")
    configuration.retries = 0
    rollout = ClusterRollout(settings, service, None, api=client.ApiClient(configuration))
    candidate = train_bundle(synthetic_training_set(2000, seed=3), TrainingOptions(rounds=10), source="test")
    with pytest.raises(
        ClusterUnavailable, match="was not declared: could not declare a model version in ConfigMap pl-model"
    ):
        rollout.publish(candidate)
    assert candidate.version in service.registry.versions()
    assert service.registry.active_version() != candidate.version
    assert not rollout.leads(), "a predictor never leads"
    assert not rollout.sync_once(), "nothing declared can be read"
