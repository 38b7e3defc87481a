"""A Kubernetes API on loopback for real Helm and the official Python client: kmock's emulator, patched.

kmock's ``KubernetesEmulator`` keeps objects in memory. Two gaps matter to Helm, fixed in
:class:`HelmFriendlyEmulator`:

- ``/api/v1`` reports ``groupVersion`` "/v1"; client-go's discovery then maps no core kinds.
- Helm writes its release record as a Secret with a protobuf body, which the emulator cannot parse.
  Those writes are answered with a minimal JSON Secret (client-go accepts JSON answers) and counted;
  the release record is Helm's own bookkeeping, not something the chart renders.

The rollout and leader-election loops need what an API server does with versions, fixed in
:class:`VersionedEmulator`:

- Every write stamps ``metadata.resourceVersion`` from one counter, as etcd's revision does.
- PUT replaces the object (the official client's leader election renews its Lease by PUT), and a
  PUT carrying a stale ``resourceVersion`` is a 409 Conflict (optimistic concurrency).
- Lists carry the current resourceVersion and honour ``fieldSelector=metadata.name=...``.
- A watch from a resourceVersion replays the changes after it, filters by the URL's namespace, ends
  after ``timeoutSeconds``, and answers 410 Gone (an ``ERROR`` event) for a version older than
  the history kept. :meth:`VersionedEmulator.compact` drops the history and ends open watches,
  as an API server's compaction and restart would.

It runs its event loop on a thread of its own, so synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import re
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal import k8s, rendering

RELEASE_SECRET_NAME = re.compile(rb"sh\.helm\.release\.v1\.[a-z0-9.-]+\.v[0-9]+")


class HelmFriendlyEmulator(kmock.KubernetesEmulator):
    """The emulator with the two fixes above, reporting :attr:`kubernetes_version` at ``/version``."""

    release_writes: int = 0
    kubernetes_version: str = "1.34.0"
    """What ``/version`` reports (kmock's own answer is a fixed 1.26): Helm checks a chart's kubeVersion."""

    async def _serve_server_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_server_version(request)
        assert isinstance(payload, dict)
        major, minor, _ = self.kubernetes_version.split(".")
        return payload | {"major": major, "minor": minor, "gitVersion": f"v{self.kubernetes_version}"}

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


@dataclass(frozen=True, slots=True)
class Change:
    """One write, as a watch replays it."""

    resource_version: int
    kind: str
    resource: Any
    namespace: str | None
    name: str
    obj: dict[str, Any]


def _name_from_selector(selector: str | None) -> str | None:
    for term in (selector or "").split(","):
        key, _, value = term.partition("=")
        if key.strip() == "metadata.name":
            return value.strip().lstrip("=")
    return None


class VersionedEmulator(HelmFriendlyEmulator):
    """The emulator with resource versions, replace, resumable watches and 410 Gone."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.revision = itertools.count(1)
        self.current_revision = 0
        self.changes: list[Change] = []
        self.oldest_kept = 0
        self.epoch = 0
        self.writes = asyncio.Lock()
        self.changed = asyncio.Condition()

    def _stored(self, resource: Any, namespace: str | None, name: str) -> Any:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key]

    async def _record(self, kind: str, request: rendering.Request, name: str, obj: dict[str, Any]) -> None:
        self.changes.append(
            Change(self.current_revision, kind, request.resource, request.namespace, name, copy.deepcopy(obj))
        )
        async with self.changed:
            self.changed.notify_all()

    def _stamp(self, metadata: dict[str, Any]) -> None:
        self.current_revision = next(self.revision)
        metadata["resourceVersion"] = str(self.current_revision)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        method, action = request.method, request.action
        writes_body = method in ("POST", "PUT", "PATCH")
        if request.resource is None or (writes_body and not isinstance(request.data, dict)):
            return await super()._handle(request)
        async with self.writes:
            if method == "PUT" and request.name:
                return await self._replace(request)
            if action == kmock.action.CREATE:
                metadata = request.data.setdefault("metadata", {})
                if request.namespace:
                    metadata["namespace"] = request.namespace
                metadata.setdefault("uid", str(uuid.uuid4()))
                metadata.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                self._stamp(metadata)
                response = await super()._handle(request)
                if response.status < 300:
                    await self._record("ADDED", request, metadata.get("name", ""), request.data)
                return response
            if action == kmock.action.UPDATE and request.name:
                stored = self._stored(request.resource, request.namespace, request.name)
                if stored is not None:
                    self._stamp(request.data.setdefault("metadata", {}))
                response = await super()._handle(request)
                if response.status < 300 and stored is not None:
                    await self._record("MODIFIED", request, request.name, stored.raw)
                return response
            if action == kmock.action.DELETE and request.name:
                stored = self._stored(request.resource, request.namespace, request.name)
                last = copy.deepcopy(stored.raw) if stored is not None else None
                response = await super()._handle(request)
                if response.status < 300 and last is not None:
                    self._stamp(last.setdefault("metadata", {}))
                    await self._record("DELETED", request, request.name, last)
                return response
        return await super()._handle(request)

    async def _replace(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        assert request.name is not None
        stored = self._stored(request.resource, request.namespace, request.name)
        if stored is None:
            raise k8s.KubernetesObjectNotFoundError()
        body = request.data
        metadata = body.setdefault("metadata", {})
        sent_version = metadata.get("resourceVersion")
        stored_version = stored.get("metadata", {}).get("resourceVersion")
        if sent_version and sent_version != stored_version:
            raise k8s.KubernetesError(
                status=409,
                reason="Conflict",
                message=f"the object has been modified (resourceVersion {sent_version} != {stored_version})",
            )
        for kept in ("uid", "creationTimestamp"):
            if kept in stored.get("metadata", {}):
                metadata[kept] = stored["metadata"][kept]
        metadata["namespace"] = request.namespace
        self._stamp(metadata)
        stored.create(body)
        await self._record("MODIFIED", request, request.name, body)
        return aiohttp.web.json_response(body)

    def _matches(self, request: rendering.Request, resource: Any, namespace: str | None, name: str) -> bool:
        wanted_name = request.name or _name_from_selector(request.params.get("fieldSelector"))
        return (
            resource == request.resource
            and (request.namespace is None or namespace == request.namespace)
            and (wanted_name is None or name == wanted_name)
        )

    def _current(self, request: rendering.Request) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj.raw)
            for (resource, namespace, name), obj in self.objects.items()
            if not obj.deleted and self._matches(request, resource, namespace, name)
        ]

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        await super()._serve_list(request)  # refuses unknown resources
        return {
            "metadata": {"resourceVersion": str(self.current_revision)},
            "items": self._current(request),
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""
        since = request.params.get("resourceVersion") or "0"
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if since != "0" and int(since) < self.oldest_kept:
            yield {
                "type": "ERROR",
                "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                    "reason": "Expired", "code": 410,
                    "message": f"too old resource version: {since} ({self.oldest_kept})",
                },
            }  # fmt: skip
            return
        cursor = int(since)
        if since == "0":
            for obj in self._current(request):
                yield {"type": "ADDED", "object": obj}
            cursor = self.current_revision
        epoch = self.epoch
        while epoch == self.epoch:
            for change in [change for change in self.changes if change.resource_version > cursor]:
                cursor = change.resource_version
                if self._matches(request, change.resource, change.namespace, change.name):
                    yield {"type": change.kind, "object": copy.deepcopy(change.obj)}
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait(), remaining)
                except TimeoutError:
                    return

    async def compact(self) -> None:
        """Forget every change so far and end open watches: resuming from an old version is 410 Gone."""
        self.changes.clear()
        self.oldest_kept = self.current_revision + 1
        self.epoch += 1
        async with self.changed:
            self.changed.notify_all()


class KubeEmulator:
    """Runs the emulator on a free loopback port and writes a kubeconfig for it."""

    def __init__(self, folder: Path, kubernetes_version: str = "1.34.0") -> None:
        self.kubeconfig = folder / "kubeconfig.yaml"
        self.kubernetes_version = kubernetes_version
        self.emulator: VersionedEmulator | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        emulator = VersionedEmulator()
        emulator.kubernetes_version = self.kubernetes_version
        self.loop = asyncio.get_running_loop()
        emulator.resources.load_bundled()
        # The prometheus-operator CRDs, as a cluster with them installed would serve them.
        for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules")):
            emulator.resources[f"monitoring.coreos.com/v1/{plural}"] = kmock.ResourceInfo(
                kind=kind, singular=kind.lower(), namespaced=True,
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

    @property
    def url(self) -> str:
        """The API server's base URL."""
        return self._url

    def compact(self) -> None:
        """Compact the history now (see :meth:`VersionedEmulator.compact`)."""
        assert self.emulator is not None
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.emulator.compact(), self.loop).result(10)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
