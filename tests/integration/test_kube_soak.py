"""Five minutes of a busy API server, then a publish, a pin and a rollback: still followed in seconds.

The rollout broke on a real API server after a minute, when the first BOOKMARK came. This soak runs
a predictor and two trainers (real ``podlatency serve`` processes with the chart's ServiceAccounts
and Roles) against the emulator while it does what a busy cluster's API server does all the time:
unrelated writes (so every ConfigMap watch gets bookmarks), watches it ends on its own, and
compactions (so a resumed watch gets 410 Gone). ``PODLATENCY_KUBE_SOAK_SECONDS`` sets the length.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from measure.servers import free_port
from podlatency.cluster.configmap import PINNED_ANNOTATION
from tests.integration.conftest import ServerProcess
from tests.integration.kube_emulator import KubeEmulator
from tests.integration.test_chart_install import install
from tests.integration.test_kube_rollout import (
    CONFIGMAP,
    NAMESPACE,
    api_for,
    create_pod,
    declared,
    events,
    eventually,
    lease_holder,
    metric,
    observed_samples,
    rollout_env,
    send_slower_fleet,
    serving,
)

SOAK_SECONDS = float(os.environ.get("PODLATENCY_KUBE_SOAK_SECONDS", "300"))
FOLLOWED_WITHIN_S = 10.0


@pytest.fixture
def busy_cluster(tmp_path: Path) -> Iterator[KubeEmulator]:
    """The chart installed as ``pl``; the server ends watches after 10-20 s and bookmarks twice a second."""
    with KubeEmulator(tmp_path, max_watch_s=10.0, bookmark_interval_s=0.5) as emulator:
        install(emulator, {}, release_name="pl", namespace=NAMESPACE)
        yield emulator


def churn(cluster: KubeEmulator, kube: client.ApiClient, stop: threading.Event) -> None:
    """Unrelated writes five times a second, and a compaction every 30 s, until ``stop``."""
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(
        NAMESPACE, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="unrelated"), data={"n": "0"})
    )
    writes, last_compaction = 0, time.monotonic()
    while not stop.wait(0.2):
        writes += 1
        core.patch_namespaced_config_map("unrelated", NAMESPACE, {"data": {"n": str(writes)}})
        if time.monotonic() - last_compaction > 30:
            cluster.compact()
            last_compaction = time.monotonic()


def follows(servers: list[ServerProcess], version: str, what: str) -> None:
    """Every server serves ``version`` within :data:`FOLLOWED_WITHIN_S` of now."""
    eventually(lambda: all(serving(server) == version for server in servers), what, FOLLOWED_WITHIN_S)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 240)
def test_rollout_is_followed_after_minutes_of_bookmarks_expiries_and_compactions(
    tmp_path: Path, model_dir: Path, busy_cluster: KubeEmulator, start_server: Any
) -> None:
    """Every process watches and serves what is declared for the whole soak, and follows at the end.

    Every five seconds each process must answer ready, report its watch up and serve the declared
    version. At the end a retrained model is published, a pin holds the next one back, and a
    rollback by patching the ConfigMap is followed by all three within seconds. No watch thread
    died, no rollout failed.
    """
    kube = api_for(busy_cluster.kubeconfig)
    trainers: dict[str, ServerProcess] = {}
    for name in ("trainer-a", "trainer-b"):
        create_pod(kube, name)
        shutil.copytree(model_dir, tmp_path / name)
        port = free_port()
        env = rollout_env(
            busy_cluster, "trainer", PODLATENCY_POD_NAME=name, PODLATENCY_PUBLISH_URL=f"http://127.0.0.1:{port}",
            PODLATENCY_RETRAIN_TOLERANCE="10", PODLATENCY_WATCH_TIMEOUT_S="30",
        )  # fmt: skip
        trainers[name] = start_server(tmp_path / name, port=port, **env)
    shutil.copytree(model_dir, tmp_path / "predictor")
    predictor = start_server(
        tmp_path / "predictor", **rollout_env(busy_cluster, "predictor", PODLATENCY_WATCH_TIMEOUT_S="30")
    )
    everyone = [*trainers.values(), predictor]
    leader = trainers[eventually(lambda: lease_holder(kube), "a leader")]
    first_version = eventually(lambda: declared(kube).get("version"), "a declared version")

    stop = threading.Event()
    writer = threading.Thread(target=churn, args=(busy_cluster, kube, stop), daemon=True)
    writer.start()
    try:
        deadline = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < deadline:
            time.sleep(5)
            for server in everyone:
                assert serving(server) == first_version, server.url
                assert metric(server, "podlatency_rollout_watching") == 1, server.url
                assert metric(server, "podlatency_model_matches_declared") == 1, server.url
            assert writer.is_alive()
    finally:
        stop.set()
        writer.join(10)
    emulator = busy_cluster.emulator
    assert emulator is not None
    assert len(emulator.bookmarked) > SOAK_SECONDS, "bookmarks all along"
    assert set(emulator.bookmarked) & set(emulator.watched_from), "watches resumed from bookmarks"
    assert all("410 Gone" in server.log() for server in everyone), "every watch outlived compactions"

    # A publish, followed by all within seconds.
    send_slower_fleet(leader, seed=50)
    outcome = leader.request("POST", "/v1/retrain").json()
    assert outcome["published"], outcome
    second_version = outcome["version"]
    follows(everyone, second_version, "the publish")

    # A pin holds the next model back.
    core = client.CoreV1Api(kube)
    core.patch_namespaced_config_map(
        CONFIGMAP, NAMESPACE, {"metadata": {"annotations": {PINNED_ANNOTATION: "true"}}}
    )
    assert leader.request("POST", "/v1/samples", {"samples": observed_samples(3.0, seed=60)}).status == 202
    assert not leader.request("POST", "/v1/retrain").json()["published"]
    assert declared(kube)["version"] == second_version

    # A rollback by patching the ConfigMap, followed by all within seconds.
    stored = {entry["version"]: entry for entry in leader.request("GET", "/v1/models").json()["versions"]}
    rollback = {
        "version": first_version,
        "sha256": stored[first_version]["archive_sha256"],
        "url": f"{leader.url}/v1/models/{first_version}/bundle",
    }
    core.patch_namespaced_config_map(CONFIGMAP, NAMESPACE, {"data": rollback})
    follows(everyone, first_version, "the rollback")
    assert not events(kube, "ModelRolloutFailed")
    for server in everyone:
        assert "Exception in thread" not in server.log()
        assert "Traceback" not in server.log()
