"""A Kubernetes API on loopback for installing the chart with real Helm: kmock's emulator, patched.

kmock's ``KubernetesEmulator`` keeps objects in memory. Two gaps matter to Helm, each fixed here:

- ``/api/v1`` reports ``groupVersion`` "/v1"; client-go's discovery then maps no core kinds.
- Helm writes its release record as a Secret with a protobuf body, which the emulator cannot parse.
  Those writes are answered with a minimal JSON Secret (client-go accepts JSON answers) and counted;
  the release record is Helm's own bookkeeping, not something the chart renders.

It runs its event loop on a thread of its own, so synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml

RELEASE_SECRET_NAME = re.compile(rb"sh\.helm\.release\.v1\.[a-z0-9.-]+\.v[0-9]+")


class HelmFriendlyEmulator(kmock.KubernetesEmulator):
    """The emulator with the two fixes above."""

    release_writes: int = 0

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if "protobuf" not in raw_request.headers.get("content-type", ""):
            return await super().__call__(raw_request)
        body = await raw_request.read()
        match = RELEASE_SECRET_NAME.search(body)
        name = match.group().decode() if match else raw_request.path.rsplit("/", 1)[-1]
        namespace = raw_request.path.split("/namespaces/")[1].split("/")[0]
        self.release_writes += 1
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}}
        return aiohttp.web.json_response(secret, status=201 if raw_request.method == "POST" else 200)

    async def _serve_version(self, request: Any) -> Any:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and str(payload.get("groupVersion", "")).startswith("/"):
            payload["groupVersion"] = payload["groupVersion"][1:]
        return payload


class KubeEmulator:
    """Runs the emulator on a free loopback port and writes a kubeconfig for it."""

    def __init__(self, folder: Path) -> None:
        self.kubeconfig = folder / "kubeconfig.yaml"
        self.emulator: HelmFriendlyEmulator | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        emulator = HelmFriendlyEmulator()
        emulator.resources.load_bundled()
        # The prometheus-operator CRD, as a cluster with it installed would serve it.
        emulator.resources["monitoring.coreos.com/v1/servicemonitors"] = kmock.ResourceInfo(
            kind="ServiceMonitor", singular="servicemonitor", namespaced=True,
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        )  # fmt: skip
        async with emulator, kmock.Server(emulator, host="127.0.0.1", port=0) as server:
            self.emulator = emulator
            self._url = str(server.url).rstrip("/")
            self._ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.05)

    def __enter__(self) -> KubeEmulator:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the Kubernetes emulator did not start")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self._url}}],
            "users": [{"name": "test", "user": {"token": "test"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}],
            "current-context": "emulator",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
