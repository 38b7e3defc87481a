"""The rollout record, timings and failure paths of the Kubernetes loops that need no API server.

Everything that talks to an API server is tested against the emulator in
``tests/integration/test_kube_rollout.py``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection.leaderelectionrecord import LeaderElectionRecord

from podlatency.bundle import ModelBundle
from podlatency.cluster.api import describe_failure
from podlatency.cluster.configmap import PINNED_ANNOTATION, bookmark_version, record_from
from podlatency.cluster.election import LeaseElection, LeaseTimings, _StoppableLeaseLock
from podlatency.cluster.rollout import ClusterRollout
from podlatency.errors import ClusterUnavailable, InvalidRollout, SettingsError
from podlatency.follower import ModelFollower, RolloutRecord
from podlatency.learning.training import (
    TrainingOptions,
    embedded_default,
    synthetic_training_set,
    train_bundle,
)
from podlatency.metrics import service_metrics
from podlatency.prediction_service import PredictionService
from podlatency.registry import ModelRegistry
from podlatency.settings import Settings


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


@pytest.fixture
def unreachable_api() -> client.ApiClient:
    """A client for an API server that is not there (a loopback port nothing listens on)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    configuration = client.Configuration(host=f"http://127.0.0.1:{closed_port}")
    configuration.retries = 0
    return client.ApiClient(configuration)


def test_publishing_without_an_api_server_keeps_the_model_and_says_so(
    tmp_path: Path, model_dir: Path, unreachable_api: client.ApiClient
) -> None:
    """An unreachable API server is a 503-class error naming the ConfigMap; the candidate stays stored."""
    shutil.copytree(model_dir, tmp_path / "models")
    settings = Settings(model_dir=tmp_path / "models", device="cpu", rollout_configmap="pl-model")
    service = PredictionService(settings)
    rollout = ClusterRollout(settings, service, None, api=unreachable_api)
    candidate = train_bundle(synthetic_training_set(2000, seed=3), TrainingOptions(rounds=10), source="test")
    with pytest.raises(
        ClusterUnavailable, match="was not declared: could not declare a model version in ConfigMap pl-model"
    ):
        rollout.publish(candidate)
    assert candidate.version in service.registry.versions()
    assert service.registry.active_version() != candidate.version
    assert not rollout.leads(), "a predictor never leads"
    assert not rollout.sync_once(), "nothing declared can be read"


def test_api_failures_are_told_on_one_line() -> None:
    """The API server's own message, with status and reason, and none of the response headers."""
    status = {
        "kind": "Status", "code": 403, "reason": "Forbidden",
        "message": 'configmaps "m" is forbidden: User "system:serviceaccount:ns:sa" cannot update resource '
        '"configmaps" in API group "" in the namespace "ns"',
    }  # fmt: skip
    refused = ApiException(status=403, reason="Forbidden")
    refused.body = json.dumps(status)
    refused.headers = {"Audit-Id": "1234", "Content-Type": "application/json"}
    assert "\n" in str(refused), "the client's own text spans lines"
    assert describe_failure(refused) == f"403 Forbidden: {status['message']}"
    assert describe_failure(ApiException(status=0, reason="stopping")) == "stopping"
    unreachable = urllib3.exceptions.MaxRetryError(None, "/api", reason=OSError("Connection refused"))  # type: ignore[arg-type]
    assert "Connection refused" in describe_failure(unreachable)
    assert describe_failure(OSError("first line\n  second line")) == "first line second line"


def test_a_bookmark_carries_only_its_resource_version() -> None:
    """A BOOKMARK's object is a plain dict; anything without a version in it gives none."""
    assert bookmark_version({"kind": "ConfigMap", "metadata": {"resourceVersion": "42"}}) == "42"
    assert bookmark_version({"metadata": {}}) is None
    assert bookmark_version({"metadata": "42"}) is None
    assert bookmark_version(None) is None


def test_the_embedded_default_is_the_same_archive_whenever_it_is_trained(tmp_path: Path) -> None:
    """Two pods that train the default in different seconds hold byte-identical archives."""
    options = TrainingOptions(rounds=20)
    first = ModelRegistry(tmp_path / "a")
    first.save(embedded_default(1000, options))
    time.sleep(1.1)  # the training time was recorded to the second
    second = ModelRegistry(tmp_path / "b")
    second.save(embedded_default(1000, options))
    [version] = first.versions()
    assert second.versions() == [version]
    assert first.archive(version) == second.archive(version)
    assert first.metadata(version)["trained_at"] == ""


def test_a_stored_version_is_served_whatever_archive_the_rollout_declares(
    tmp_path: Path, model_dir: Path, small_bundle: ModelBundle
) -> None:
    """A pod that stores the declared version serves it: a rollback or restart raises no false failure.

    Its archive may differ from the declaring pod's in metadata alone (here, when it was trained);
    the version is the content hash of what decides predictions, checked on load, so nothing is
    fetched and no ModelRolloutFailed is reported. A version it lacks is fetched, and a fetch that
    fails is a failure.
    """
    shutil.copytree(model_dir, tmp_path / "models")
    service = PredictionService(Settings(model_dir=tmp_path / "models", device="cpu"))
    other = train_bundle(synthetic_training_set(2000, seed=5), TrainingOptions(rounds=10), source="test")
    service.registry.save(dataclasses.replace(other, trained_at="2001-01-01T00:00:00+00:00"), activate=False)
    service.serve_bundle(small_bundle)
    reported: list[tuple[str, str, str]] = []
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        raise ClusterUnavailable(f"{url} is not reachable")

    follower = ModelFollower(service, lambda *event: reported.append(event), fetch)
    failed = service_metrics().model_rollouts.labels(outcome="failed")
    failures_before = failed._value.get()  # the counter's value, without a scrape
    elsewhere_sha = "e" * 64  # the declaring pod's archive: other bytes, same version
    assert follower.apply(RolloutRecord(other.version, elsewhere_sha, "http://gone/bundle"))
    assert service.holder.current().version == other.version
    assert follower.apply(RolloutRecord(small_bundle.version, elsewhere_sha, "http://gone/bundle"))
    assert service.holder.current().version == small_bundle.version, "rolled back"
    assert fetched == []
    assert [event[1] for event in reported] == ["ModelRolledOut", "ModelRolledOut"]
    assert failed._value.get() == failures_before

    assert not follower.apply(RolloutRecord("0123456789abcdef", elsewhere_sha, "http://gone/bundle"))
    assert fetched == ["http://gone/bundle"]
    assert reported[-1][1] == "ModelRolloutFailed"
    assert failed._value.get() == failures_before + 1


def test_a_leader_declares_only_models_trained_on_observations(
    tmp_path: Path, unreachable_api: client.ApiClient, small_bundle: ModelBundle
) -> None:
    """Over an empty ConfigMap: the trained version served, else the newest stored, never the default."""
    settings = Settings(model_dir=tmp_path / "models", device="cpu", rollout_configmap="pl-model")
    service = PredictionService(settings)
    default = service.train_default()
    service.serve_bundle(default)
    rollout = ClusterRollout(settings, service, None, api=unreachable_api)
    assert rollout.trained_version() is None, "only the embedded default: declare nothing"
    service.registry.save(small_bundle, activate=False)
    assert rollout.trained_version() == small_bundle.version, "serving the default: the newest trained one"
    newer = train_bundle(synthetic_training_set(2000, seed=6), TrainingOptions(rounds=10), source="test")
    service.registry.save(newer, activate=False)
    service.serve_bundle(small_bundle)
    assert rollout.trained_version() == small_bundle.version, "the trained version it serves comes first"


def test_lease_transitions_count_changes_of_holder() -> None:
    """As client-go counts them: a new holder, or one after a release, adds one; a renewal none."""
    lock = _StoppableLeaseLock(client.ApiClient(), "lease", "ns", "b")
    now = str(datetime.now(UTC).replace(tzinfo=None))
    record = LeaderElectionRecord("b", "15", now, now)  # type: ignore[no-untyped-call]
    assert lock.get_lease_spec(record).lease_transitions == 0, "created"
    renewed = client.V1LeaseSpec(holder_identity="b", lease_transitions=2)
    assert lock.get_lease_spec(record, renewed).lease_transitions == 2
    taken = client.V1LeaseSpec(holder_identity="a", lease_transitions=2)
    assert lock.get_lease_spec(record, taken).lease_transitions == 3
    released = client.V1LeaseSpec(holder_identity="", lease_transitions=3)
    assert lock.get_lease_spec(record, released).lease_transitions == 4


@pytest.fixture
def campaign(unreachable_api: client.ApiClient) -> Iterator[LeaseElection]:
    election = LeaseElection(
        unreachable_api,
        namespace="ns",
        name="lease",
        identity="me",
        timings=LeaseTimings(3, 2, 1),
        on_started=lambda: None,
        on_stopped=lambda: None,
    )
    yield election
    election.stop()


def test_the_campaign_outlives_an_unreachable_api_server(
    campaign: LeaseElection, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused connection is a failed try, logged on one line, not the end of the campaign thread.

    kubernetes.leaderelection catches only ApiException: before, the first refused connection
    ended the thread, and the trainer never campaigned again.
    """
    campaign.start()
    time.sleep(2.5)
    assert campaign._thread.is_alive()  # the thread is what must not die
    assert not campaign.is_leader
    failures = [r.getMessage() for r in caplog.records if "could not read the Lease lease" in r.getMessage()]
    assert len(failures) >= 2, "tried again every retry period"
    assert all("\n" not in message for message in failures)
