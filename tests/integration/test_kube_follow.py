"""The rollout loops in this process against the API emulator, through what a busy API server does.

No server process here: :class:`RolloutConfigMap` and :class:`ClusterRollout` run on this test's
threads with a ServiceAccount's token, against the emulator with the chart installed as release
``pl`` (its Roles decide what is allowed). The emulator sends BOOKMARK events, ends watches at its
own limit, answers 410 Gone after a compaction, and can send an event no client expects.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from podlatency.bundle import ModelBundle
from podlatency.cluster.configmap import RolloutConfigMap
from podlatency.cluster.rollout import ClusterRollout
from podlatency.errors import ClusterUnavailable
from podlatency.prediction_service import PredictionService
from podlatency.settings import Settings
from tests.integration.kube_emulator import KubeEmulator
from tests.integration.test_chart_install import install
from tests.integration.test_kube_rollout import api_for, eventually

NAMESPACE = "default"
CONFIGMAP = "pl-podlatency-model"


@pytest.fixture
def busy_cluster(tmp_path: Path) -> Iterator[KubeEmulator]:
    """The chart installed as ``pl``; watches end after 1-2 s and get a bookmark on every other write."""
    with KubeEmulator(tmp_path, max_watch_s=1.0) as emulator:
        install(emulator, {}, release_name="pl", namespace=NAMESPACE)
        yield emulator


def test_the_follow_loop_outlives_bookmarks_expiries_garbage_and_its_own_callbacks(
    busy_cluster: KubeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The watch thread lives through everything a real API server does, and still sees every change.

    Bookmarks (the client hands them over as dicts) move its resourceVersion on: a later watch
    resumes from a bookmark's version. Watches the server ends, a compaction's 410 Gone, an event
    no client expects, a callback that raises, a deleted and recreated ConfigMap: none ends it, each
    unexpected one is logged on one line, and the next change is delivered. Only stop() ends it.
    """
    admin = client.CoreV1Api(api_for(busy_cluster.kubeconfig))
    follower = RolloutConfigMap(
        api_for(busy_cluster.kubeconfig_for(NAMESPACE, "pl-podlatency")), NAMESPACE, CONFIGMAP
    )
    seen: list[str | None] = []
    calls = {"change": 0}

    def on_change(configmap: Any | None) -> None:
        calls["change"] += 1
        if calls["change"] == 2:
            raise RuntimeError("a bug in applying one change")
        seen.append(None if configmap is None else (configmap.data or {}).get("version", ""))

    def on_quiet() -> None:
        raise RuntimeError("a bug between watches")

    thread = threading.Thread(target=follower.follow, args=(on_change, on_quiet, 30), daemon=True)
    caplog.set_level(logging.INFO, logger="podlatency")
    thread.start()
    eventually(lambda: follower.watching and seen == [""], "the first list")

    def declare(version: str) -> None:
        admin.patch_namespaced_config_map(CONFIGMAP, NAMESPACE, {"data": {"version": version}})

    declare("swallowed")  # its delivery raises: logged, and the loop goes on
    unrelated = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="unrelated"), data={"n": "0"})
    admin.create_namespaced_config_map(NAMESPACE, unrelated)
    for count in range(1, 40):
        admin.patch_namespaced_config_map("unrelated", NAMESPACE, {"data": {"n": str(count)}})
        time.sleep(0.05)
    emulator = busy_cluster.emulator
    assert emulator is not None
    eventually(
        lambda: set(emulator.bookmarked) & set(emulator.watched_from), "a watch resumed from a bookmark"
    )
    declare("v1")
    eventually(lambda: seen[-1] == "v1", "the change after the bookmarks")

    busy_cluster.compact()
    declare("v2")
    eventually(lambda: seen[-1] == "v2", "the change after 410 Gone")

    busy_cluster.inject(
        {
            "type": "SURPRISE",
            "object": {"kind": "ConfigMap", "metadata": {"name": CONFIGMAP, "resourceVersion": "1"}},
        }
    )
    declare("v3")
    eventually(lambda: seen[-1] == "v3", "the change after an unexpected event")

    admin.delete_namespaced_config_map(CONFIGMAP, NAMESPACE)
    eventually(lambda: seen[-1] is None, "the deletion")
    admin.create_namespaced_config_map(
        NAMESPACE, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=CONFIGMAP), data={"version": "v4"})
    )
    eventually(lambda: seen[-1] == "v4", "the recreated ConfigMap")
    assert "swallowed" not in seen
    assert thread.is_alive()
    assert follower.watching

    messages = [record.getMessage() for record in caplog.records]
    assert any("410 Gone" in message for message in messages)
    assert any("unexpected watch event 'SURPRISE'" in message for message in messages)
    assert any("applying a change of the rollout ConfigMap failed" in m for m in messages)
    assert any("retrying the declared rollout failed" in m for m in messages)
    follower.stop()
    thread.join(10)
    assert not thread.is_alive(), "stop() ends it"


def test_a_refused_publish_names_the_configmap_and_the_missing_right(
    busy_cluster: KubeEmulator, tmp_path: Path, model_dir: Path, small_bundle: ModelBundle
) -> None:
    """A process whose account may not update the ConfigMap is told which ConfigMap and which right.

    The predictors' account may only read and watch it; publishing with it is a 503-class error
    whose one line says the ConfigMap, the namespace, the account, the verb and the resource.
    """
    shutil.copytree(model_dir, tmp_path / "models")
    settings = Settings(
        model_dir=tmp_path / "models", device="cpu", rollout_configmap=CONFIGMAP, namespace=NAMESPACE
    )
    api = api_for(busy_cluster.kubeconfig_for(NAMESPACE, "pl-podlatency"))
    rollout = ClusterRollout(settings, PredictionService(settings), None, api=api)
    with pytest.raises(ClusterUnavailable) as refused:
        rollout.publish(small_bundle)
    detail = refused.value.detail
    assert "\n" not in detail
    assert f"in ConfigMap {CONFIGMAP} (namespace {NAMESPACE}): 403 Forbidden" in detail
    assert 'User "system:serviceaccount:default:pl-podlatency" cannot update resource "configmaps"' in detail
