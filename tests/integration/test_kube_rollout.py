"""The Kubernetes rollout with real server processes and the official client, against an API emulator.

The emulator (:mod:`tests.integration.kube_emulator`) is kmock's in-memory API server with resource
versions, replace, resumable watches, BOOKMARK events, 410 Gone and RBAC added; it is the closest real
thing to a cluster that runs here (no kube-apiserver can be installed on these machines). Each test
installs the chart with real Helm as release ``pl`` first, so the rollout ConfigMap, the
ServiceAccounts and the Roles are the chart's own. The servers are real ``podlatency serve``
processes configured as they are in the chart: ``KUBECONFIG`` points them at the emulator with their
ServiceAccount's token, so any call the chart's Roles do not grant is refused with 403. The Lease
renewals and Events move the resourceVersion on all the time, so every ConfigMap watch here gets
BOOKMARK events, as on a real API server.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from measure.servers import free_port
from podlatency.cluster.configmap import LEADER_ANNOTATION, PINNED_ANNOTATION
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.learning.workload import generate, pod_rows
from podlatency.registry import ModelRegistry
from tests.integration.conftest import ServerProcess
from tests.integration.kube_emulator import KubeEmulator
from tests.integration.test_chart_install import install, upgrade

NAMESPACE = "default"
CONFIGMAP = "pl-podlatency-model"
LEASE = f"{CONFIGMAP}-leader"
PROBE = {"pods": pod_rows(50, seed=99)}
SERVICE_ACCOUNTS = {"predictor": "pl-podlatency", "trainer": "pl-podlatency-trainer"}
"""The chart's ServiceAccount for each role (release ``pl``)."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeEmulator]:
    """An API emulator with the chart installed as release ``pl`` (its Roles, accounts and ConfigMap)."""
    with KubeEmulator(tmp_path) as emulator:
        objects, _ = install(emulator, {}, release_name="pl", namespace=NAMESPACE)
        bindings = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "RoleBinding"}
        for role, account in SERVICE_ACCOUNTS.items():
            assert bindings[f"pl-podlatency-{role}"]["subjects"][0]["name"] == account
        yield emulator


@pytest.fixture
def kube(cluster: KubeEmulator) -> client.ApiClient:
    """The tests' own client: the emulator's admin."""
    return api_for(cluster.kubeconfig)


def api_for(kubeconfig: Path) -> client.ApiClient:
    """A client that authenticates as ``kubeconfig`` says."""
    configuration = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def rollout_env(cluster: KubeEmulator, role: str, **extra: str) -> dict[str, str]:
    """What the chart sets for ``role``, its ServiceAccount's token, and short leader-election timings."""
    return {
        "KUBECONFIG": str(cluster.kubeconfig_for(NAMESPACE, SERVICE_ACCOUNTS[role])),
        "PODLATENCY_ROLE": role,
        "PODLATENCY_ROLLOUT_CONFIGMAP": CONFIGMAP,
        "PODLATENCY_NAMESPACE": NAMESPACE,
        "PODLATENCY_LEASE_DURATION_S": "3",
        "PODLATENCY_LEASE_RENEW_DEADLINE_S": "2",
        "PODLATENCY_LEASE_RETRY_PERIOD_S": "1",
        "PODLATENCY_WATCH_TIMEOUT_S": "5",
        "PODLATENCY_RETRAIN_INTERVAL_S": "0",
    } | extra


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def serving(server: ServerProcess) -> str | None:
    answer = server.request("GET", "/readyz")
    return str(answer.json()["model_version"]) if answer.status == 200 else None


def declared(kube: client.ApiClient) -> dict[str, str]:
    configmap = client.CoreV1Api(kube).read_namespaced_config_map(CONFIGMAP, NAMESPACE)
    return dict(configmap.data or {})


def lease_holder(kube: client.ApiClient) -> str | None:
    try:
        lease = client.CoordinationV1Api(kube).read_namespaced_lease(LEASE, NAMESPACE)
    except client.exceptions.ApiException:
        return None
    holder = lease.spec.holder_identity if lease.spec is not None else None
    return str(holder) if holder else None


def lease_transitions(kube: client.ApiClient) -> int:
    """How many times the Lease changed hands (``spec.leaseTransitions``)."""
    lease = client.CoordinationV1Api(kube).read_namespaced_lease(LEASE, NAMESPACE)
    return int(lease.spec.lease_transitions or 0) if lease.spec is not None else 0


def events(kube: client.ApiClient, reason: str) -> list[str]:
    return [
        str(event.message)
        for event in client.CoreV1Api(kube).list_namespaced_event(NAMESPACE).items
        if event.reason == reason
    ]


def announced_leader(kube: client.ApiClient) -> str | None:
    """The leader's address as the rollout ConfigMap names it."""
    metadata = client.CoreV1Api(kube).read_namespaced_config_map(CONFIGMAP, NAMESPACE).metadata
    annotations = (metadata.annotations if metadata is not None else None) or {}
    url = annotations.get(LEADER_ANNOTATION)
    return str(url) if url else None


def held(server: ServerProcess) -> int:
    """Rows a trainer holds for retraining and evaluation, both targets."""
    counts = server.request("GET", "/data/status").json()
    return int(counts["training_data"]["total_samples"]) + int(counts["test_data"]["total_samples"])


def create_pod(kube: client.ApiClient, name: str) -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app.kubernetes.io/component": "trainer"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="trainer", image="podlatency")]),
    )
    client.CoreV1Api(kube).create_namespaced_pod(NAMESPACE, pod)


def observed_samples(slowdown: float, seed: int, count: int = 4000) -> list[dict[str, Any]]:
    fleet = generate(count, seed=seed, slowdown=slowdown)
    return [
        row | {"actual_ttft_ms": ttft, "actual_tpot_ms": tpot}
        for row, ttft, tpot in zip(fleet.rows(), fleet.ttft_ms.tolist(), fleet.tpot_ms.tolist(), strict=True)
    ]


def send_slower_fleet(trainer: ServerProcess, seed: int) -> list[dict[str, Any]]:
    """Two batches of samples from a fleet twice as slow, accepted by ``trainer``; returns the last."""
    for batch in range(2):
        rows = observed_samples(2.0, seed=seed + batch)
        assert trainer.request("POST", "/v1/samples", {"samples": rows}).status == 202
    return rows


def mean_ttft(server: ServerProcess) -> float:
    predictions = server.request("POST", "/v1/predict", PROBE).json()["predictions"]
    return float(sum(p["ttft_ms"] for p in predictions)) / len(predictions)


def test_one_trainer_leads_publishes_and_hands_over(
    tmp_path: Path, model_dir: Path, cluster: KubeEmulator, kube: client.ApiClient, start_server: Any
) -> None:
    """Two trainers and a predictor, end to end through the ConfigMap and the Lease.

    Exactly one trainer leads: it holds the Lease, names its address in the ConfigMap, declares a
    version and takes samples (the standby forwards the samples it is sent to the leader). A retrained
    model it publishes reaches the predictor and the standby. A pin keeps the next better model from
    being published; a patch to an earlier version rolls the predictor back. When the leader stops,
    the standby takes over, names itself and serves the declared archive from its own address. Each
    step leaves Events on the ConfigMap. No pod is ever patched: trainers have no rights over pods.
    """
    trainers: dict[str, ServerProcess] = {}
    for name in ("trainer-a", "trainer-b"):
        create_pod(kube, name)
        folder = tmp_path / name
        shutil.copytree(model_dir, folder)
        port = free_port()
        trainers[name] = start_server(
            folder,
            port=port,
            **rollout_env(
                cluster,
                "trainer",
                PODLATENCY_POD_NAME=name,
                PODLATENCY_PUBLISH_URL=f"http://127.0.0.1:{port}",
                # Any candidate may be published: the pin, not the held-out gate, must hold it back.
                PODLATENCY_RETRAIN_TOLERANCE="10",
            ),
        )
    predictor_folder = tmp_path / "predictor"
    shutil.copytree(model_dir, predictor_folder)
    predictor = start_server(predictor_folder, **rollout_env(cluster, "predictor"))

    leader_name = eventually(lambda: lease_holder(kube), "a leader")
    standby_name = next(name for name in trainers if name != leader_name)
    leader, standby = trainers[leader_name], trainers[standby_name]
    first_version = eventually(lambda: declared(kube).get("version"), "a declared version")
    assert declared(kube)["url"] == f"{leader.url}/v1/models/{first_version}/bundle"
    assert eventually(lambda: announced_leader(kube), "the leader's address") == leader.url
    assert "podlatency_trainer_leader 1.0" in leader.request("GET", "/metrics").body.decode()
    assert "podlatency_trainer_leader 0.0" in standby.request("GET", "/metrics").body.decode()
    before_forward = held(leader)
    # Until its watch has read the leader's address the standby answers 503 not_leader; then it forwards.
    two_rows = {"samples": observed_samples(1.0, seed=1, count=2)}
    forwarded = eventually(
        lambda: (answer := standby.request("POST", "/v1/samples", two_rows)).status == 202 and answer,
        "the standby forwarding samples to the leader",
    )
    answered_by = {key.lower(): value for key, value in forwarded.headers.items()}["x-podlatency-leader"]
    assert answered_by == leader.url
    assert held(leader) == before_forward + 4, "both rows' TTFT and TPOT are kept by the leader"
    assert held(standby) == 0
    eventually(lambda: serving(predictor) == first_version, "the predictor on the declared version")
    before = mean_ttft(predictor)

    # A better model from a slower fleet: published by the leader, followed by everyone.
    rows = send_slower_fleet(leader, seed=20)
    outcome = leader.request("POST", "/v1/retrain").json()
    assert outcome["published"], outcome
    second_version = outcome["version"]
    assert declared(kube)["version"] == second_version
    eventually(lambda: serving(predictor) == second_version, "the predictor on the published version")
    eventually(lambda: serving(standby) == second_version, "the standby mirroring the published version")
    assert 1.5 < mean_ttft(predictor) / before < 2.5
    assert any(second_version in message for message in events(kube, "ModelPublished"))
    # Each process reports its own rollout from its watch thread, so the third report may come a moment later.
    eventually(
        lambda: (
            len([m for m in events(kube, "ModelRolledOut") if f"now serving model {second_version}" in m])
            >= 3
        ),
        "a ModelRolledOut event from each of the three processes",
    )

    # Pinned: the next better model is stored but not published.
    client.CoreV1Api(kube).patch_namespaced_config_map(
        CONFIGMAP, NAMESPACE, {"metadata": {"annotations": {PINNED_ANNOTATION: "true"}}}
    )
    rows = observed_samples(3.0, seed=30)
    assert leader.request("POST", "/v1/samples", {"samples": rows}).status == 202
    pinned = leader.request("POST", "/v1/retrain").json()
    assert not pinned["published"]
    assert "pinned" in pinned["reason"]
    stored_versions = [entry["version"] for entry in leader.request("GET", "/v1/models").json()["versions"]]
    assert pinned["version"] in stored_versions, "the held-back candidate is kept"
    assert declared(kube)["version"] == second_version
    time.sleep(1.0)
    assert serving(predictor) == second_version

    # Rolled back by patching the ConfigMap to the first version (as `kubectl patch` would).
    stored = {entry["version"]: entry for entry in leader.request("GET", "/v1/models").json()["versions"]}
    rollback = {
        "version": first_version,
        "sha256": stored[first_version]["archive_sha256"],
        "url": f"{leader.url}/v1/models/{first_version}/bundle",
    }
    client.CoreV1Api(kube).patch_namespaced_config_map(CONFIGMAP, NAMESPACE, {"data": rollback})
    eventually(lambda: serving(predictor) == first_version, "the predictor rolled back")
    eventually(lambda: serving(standby) == first_version, "the standby rolled back")

    # The leader stops: the standby takes over and serves the declared archive from its own address.
    assert lease_transitions(kube) == 0
    leader.stop()
    eventually(lambda: lease_holder(kube) == standby_name, "the standby taking over", timeout=15)
    assert lease_transitions(kube) == 1
    eventually(lambda: announced_leader(kube) == standby.url, "the new leader's address")
    new_url = eventually(
        lambda: declared(kube)["url"].startswith(standby.url) and declared(kube)["url"],
        "the new leader's archive URL",
    )
    assert declared(kube)["version"] == first_version
    assert standby.request("GET", new_url.removeprefix(standby.url)).status == 200
    assert standby.request("POST", "/v1/samples", {"samples": rows[:5]}).status == 202
    assert events(kube, "LeaderElected")


def metric(server: ServerProcess, name: str) -> float:
    """The value of one unlabelled metric on a server's /metrics."""
    text = server.request("GET", "/metrics").body.decode()
    return float(next(line for line in text.splitlines() if line.startswith(f"{name} ")).split()[-1])


def rollout_status(server: ServerProcess) -> dict[str, Any]:
    """What /status says of the rollout (the same object /v1/model carries)."""
    status: dict[str, Any] = server.request("GET", "/status").json()["rollout"]
    assert server.request("GET", "/v1/model").json()["rollout"].keys() == status.keys()
    return status


@contextlib.contextmanager
def serving_files(folder: Path) -> Iterator[str]:
    """A plain HTTP server on loopback for the files in ``folder``; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_predictor_follows_through_a_410_and_survives_a_bad_rollout(
    tmp_path: Path, model_dir: Path, cluster: KubeEmulator, kube: client.ApiClient, start_server: Any
) -> None:
    """A predictor's watch outlives the API server's compaction; a wrong checksum keeps the old model.

    After the compaction its watch resumes from a version the server no longer has (410 Gone), lists
    again, and still picks up the next change. A downloaded archive whose SHA-256 does not match is
    refused: the model in service keeps serving, the failure is a metric and a Warning Event, and the
    drift shows: /status and /v1/model name the declared version beside the served one, and the
    gauges say they differ and since when, until the right archive is declared and followed.
    """
    folder = tmp_path / "predictor"
    shutil.copytree(model_dir, folder)
    registry = ModelRegistry(folder)
    first_version = registry.active_version()
    assert first_version is not None
    other = train_bundle(synthetic_training_set(3000, seed=7), TrainingOptions(rounds=20), source="test")
    registry.save(other, activate=False)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def record(version: str, sha256: str | None = None) -> dict[str, str]:
        return {
            "version": version,
            "sha256": sha256 or registry.archive_sha256(version),
            "url": f"{base}/v1/models/{version}/bundle",
        }

    core = client.CoreV1Api(kube)
    core.patch_namespaced_config_map(CONFIGMAP, NAMESPACE, {"data": record(first_version)})
    predictor = start_server(folder, port=port, **rollout_env(cluster, "predictor"))
    eventually(lambda: serving(predictor) == first_version, "the declared version")
    eventually(lambda: metric(predictor, "podlatency_rollout_watching") == 1, "the watch open")
    assert rollout_status(predictor) | {"mismatch_seconds": 0} == {
        "configmap": CONFIGMAP, "watching": True, "declared_version": first_version,
        "matches_declared": True, "mismatch_seconds": 0,
    }  # fmt: skip

    cluster.compact()
    core.patch_namespaced_config_map(CONFIGMAP, NAMESPACE, {"data": record(other.version)})
    eventually(lambda: serving(predictor) == other.version, "the change after the 410", timeout=20)
    assert "410 Gone" in predictor.log()

    # A version the predictor does not hold, served elsewhere: first with the wrong checksum.
    third = train_bundle(synthetic_training_set(3000, seed=8), TrainingOptions(rounds=20), source="test")
    elsewhere = ModelRegistry(tmp_path / "elsewhere")
    elsewhere.save(third)
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / third.version).write_bytes(elsewhere.archive(third.version))
    with serving_files(archives) as archive_url:
        wrong = {"version": third.version, "sha256": "0" * 64, "url": f"{archive_url}/{third.version}"}
        core.patch_namespaced_config_map(CONFIGMAP, NAMESPACE, {"data": wrong})
        failure = eventually(lambda: events(kube, "ModelRolloutFailed"), "a Warning event")
        assert "sha256" in failure[0]
        assert f"still serving {other.version}" in failure[0]
        assert serving(predictor) == other.version
        metrics = predictor.request("GET", "/metrics").body.decode()
        failed = next(line for line in metrics.splitlines() if 'rollouts_total{outcome="failed"}' in line)
        assert float(failed.split()[-1]) >= 1
        assert predictor.request("POST", "/v1/predict", PROBE).status == 200
        assert metric(predictor, "podlatency_model_matches_declared") == 0
        assert (
            metric(predictor, "podlatency_model_declared_mismatch_since_timestamp_seconds") > time.time() - 60
        )
        time.sleep(0.2)
        drift = rollout_status(predictor)
        assert (drift["declared_version"], drift["matches_declared"]) == (third.version, False)
        assert drift["mismatch_seconds"] > 0.1

        right = wrong | {"sha256": elsewhere.archive_sha256(third.version)}
        core.patch_namespaced_config_map(CONFIGMAP, NAMESPACE, {"data": right})
        eventually(lambda: serving(predictor) == third.version, "the predictor on the right archive")
        assert metric(predictor, "podlatency_model_matches_declared") == 1
        assert metric(predictor, "podlatency_model_declared_mismatch_since_timestamp_seconds") == 0
        assert rollout_status(predictor)["matches_declared"]
        assert "Traceback" not in predictor.log()


def test_a_standby_takes_over_from_a_crashed_leader(
    tmp_path: Path, model_dir: Path, cluster: KubeEmulator, kube: client.ApiClient, start_server: Any
) -> None:
    """A leader killed outright (no release) loses the Lease when it expires; the standby then leads."""
    trainers: dict[str, ServerProcess] = {}
    for name in ("trainer-a", "trainer-b"):
        create_pod(kube, name)
        folder = tmp_path / name
        shutil.copytree(model_dir, folder)
        env = rollout_env(cluster, "trainer", PODLATENCY_POD_NAME=name)
        trainers[name] = start_server(folder, **env)
    leader_name = eventually(lambda: lease_holder(kube), "a leader")
    standby_name = next(name for name in trainers if name != leader_name)
    eventually(lambda: declared(kube).get("version"), "a declared version")
    leader = trainers[leader_name].process
    assert leader is not None
    leader.kill()
    leader.wait()
    killed_at = time.monotonic()
    eventually(lambda: lease_holder(kube) == standby_name, "the standby taking over", timeout=15)
    # Not before the 3 s lease ran out (the killed leader could not release it), and soon after.
    assert 1.5 < time.monotonic() - killed_at < 10.0
    assert lease_transitions(kube) == 1
    new_leader = trainers[standby_name]
    eventually(lambda: announced_leader(kube) == new_leader.url, "the new leader's address")
    rows = observed_samples(1.0, seed=2, count=5)
    assert trainers[standby_name].request("POST", "/v1/samples", {"samples": rows}).status == 202


def test_a_deleted_configmap_is_reported_and_recovered_without_the_untrained_default(
    tmp_path: Path, model_dir: Path, cluster: KubeEmulator, kube: client.ApiClient, start_server: Any
) -> None:
    """Deleting the rollout ConfigMap stops nothing from serving, says what to do, and heals.

    Trainers may not create it, so the leader does not try: it logs once what is missing and how to
    restore it, the gauge says it is gone, and a retrain answers 503 naming the ConfigMap. A trainer
    started meanwhile has only the embedded default. When ``helm upgrade`` (real Helm) has created
    the chart's ConfigMap again, the leader
    names itself and declares the trained version it serves, never an untrained default; the new
    trainer follows it and forwards samples to the leader; and when the leader goes, the new trainer
    leads without declaring its default.
    """
    create_pod(kube, "trainer-a")
    folder = tmp_path / "trainer-a"
    shutil.copytree(model_dir, folder)
    port = free_port()
    env = rollout_env(
        cluster, "trainer", PODLATENCY_POD_NAME="trainer-a", PODLATENCY_PUBLISH_URL=f"http://127.0.0.1:{port}"
    )
    leader = start_server(folder, port=port, **env)
    trained = eventually(lambda: declared(kube).get("version"), "a declared version")
    assert trained == ModelRegistry(model_dir).active_version(), "the trained version it serves"

    client.CoreV1Api(kube).delete_namespaced_config_map(CONFIGMAP, NAMESPACE)
    eventually(lambda: metric(leader, "podlatency_rollout_configmap_exists") == 0, "the gauge")
    rows = send_slower_fleet(leader, seed=40)
    refused = leader.request("POST", "/v1/retrain")
    assert refused.status == 503
    assert refused.json()["error"] == "rollout_configmap_missing"
    assert f"ConfigMap {CONFIGMAP} does not exist" in refused.json()["detail"]
    assert "helm upgrade" in refused.json()["detail"]
    assert serving(leader) == trained, "it keeps serving"

    # A trainer started while the ConfigMap is gone trains the embedded default.
    create_pod(kube, "trainer-b")
    newcomer = start_server(
        tmp_path / "trainer-b",
        **rollout_env(cluster, "trainer", PODLATENCY_POD_NAME="trainer-b", PODLATENCY_DEFAULT_SAMPLES="2000"),
    )
    default = eventually(lambda: serving(newcomer), "the newcomer's embedded default", timeout=60)
    assert default != trained

    assert upgrade(cluster, release_name="pl", namespace=NAMESPACE) == 2  # creates what the release lacks
    eventually(lambda: announced_leader(kube) == leader.url, "the leader naming itself again")
    eventually(lambda: declared(kube).get("version") == trained, "the trained version declared again")
    eventually(lambda: serving(newcomer) == trained, "the newcomer following it")
    assert newcomer.request("POST", "/v1/samples", {"samples": rows[:5]}).status == 202
    missing = [line for line in leader.log().splitlines() if "does not exist in namespace" in line]
    assert len(missing) == 1, missing
    assert "restore it with `helm upgrade`" in missing[0]
    assert "exists again" in leader.log()
    assert metric(leader, "podlatency_rollout_configmap_exists") == 1
    assert upgrade(cluster, release_name="pl", namespace=NAMESPACE) == 3
    assert declared(kube)["version"] == trained, "an upgrade leaves the declared version alone"

    leader.stop()
    eventually(lambda: lease_holder(kube) == "trainer-b", "the newcomer leading", timeout=15)
    eventually(lambda: announced_leader(kube) == newcomer.url, "the newcomer naming itself")
    assert declared(kube)["version"] == trained, "no untrained default over the trained version"
    assert serving(newcomer) == trained
    assert not events(kube, "ModelRolloutFailed")
