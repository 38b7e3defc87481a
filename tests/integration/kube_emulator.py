"""A Kubernetes API on loopback for real Helm and the official Python client: kmock's emulator, patched.

kmock's ``KubernetesEmulator`` keeps objects in memory. Two gaps matter to Helm, fixed in
:class:`HelmFriendlyEmulator`:

- ``/api/v1`` reports ``groupVersion`` "/v1"; client-go's discovery then maps no core kinds.
- Helm writes its release record as a Secret with a protobuf body, which kmock cannot parse. Those
  writes are decoded (:mod:`tests.integration.kube_protobuf`), stored and counted, and served back
  as JSON (client-go accepts JSON answers); lists honour equality label selectors, as Helm's
  release lookups need. So ``helm upgrade`` finds the release it upgrades.

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
- A watch that asks for bookmarks (``allowWatchBookmarks=true``) gets a BOOKMARK event whenever
  writes it does not see (other objects) have moved the resourceVersion on, at most once per
  :attr:`VersionedEmulator.bookmark_interval_s`. The official client hands a bookmark's object over
  as a plain dict, not a model object: what broke the rollout watch on a real API server.
- A watch also ends when the server's own limit runs out (:attr:`VersionedEmulator.max_watch_s`,
  randomized as kube-apiserver's ``--min-request-timeout`` is), whatever ``timeoutSeconds`` said.

Requests are authorized as an API server with RBAC does (:mod:`tests.integration.kube_rbac`): a
ServiceAccount's token may do only what the Roles bound to it allow, and anything else is a 403.

It runs its event loop on a thread of its own, so synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import random
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

from tests.integration.kube_protobuf import secret_from_protobuf
from tests.integration.kube_rbac import (
    ADMIN_TOKEN,
    RBAC_GROUP,
    name_from_selector,
    refusal_of,
    service_account_token,
)


def labels_match(selector: str | None, labels: dict[str, str]) -> bool:
    """Whether ``labels`` satisfy an equality-based label selector (``a=b,c!=d,e``)."""
    for term in filter(None, (selector or "").split(",")):
        if "!=" in term:
            key, _, value = term.partition("!=")
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, _, value = term.replace("==", "=").partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.strip() not in labels:
            return False
    return True


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
        secret = secret_from_protobuf(await raw_request.read())
        secret["metadata"]["namespace"] = raw_request.path.split("/namespaces/")[1].split("/")[0]
        self.release_writes += 1
        await self._keep_secret(secret)
        return aiohttp.web.json_response(secret, status=201 if raw_request.method == "POST" else 200)

    async def _keep_secret(self, secret: dict[str, Any]) -> None:
        """Store a Secret written in protobuf (Helm's release record), so that it is read back as JSON."""
        metadata = secret["metadata"]
        self.objects["v1/secrets", metadata["namespace"], metadata["name"]] = secret

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


class VersionedEmulator(HelmFriendlyEmulator):
    """The emulator with resource versions, replace, resumable watches, bookmarks, 410 Gone and RBAC."""

    bookmark_interval_s: float = 0.0
    """A watch gets a BOOKMARK at most this often (0: after every write it does not see)."""
    max_watch_s: float | None = None
    """The server's own limit on a watch, randomized up to twice this (None: only timeoutSeconds)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.revision = itertools.count(1)
        self.current_revision = 0
        self.changes: list[Change] = []
        self.oldest_kept = 0
        self.epoch = 0
        self.writes = asyncio.Lock()
        self.changed = asyncio.Condition()
        self.bookmarked: list[str] = []
        """The resourceVersion of each BOOKMARK sent, in order."""
        self.watched_from: list[str] = []
        """The resourceVersion each watch started from, in order ("0": from now, with the state)."""
        self.injected: list[dict[str, Any]] = []

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

    async def _keep_secret(self, secret: dict[str, Any]) -> None:
        async with self.writes:
            self._stamp(secret["metadata"])
            await super()._keep_secret(secret)

    def _stored_rbac(self, plural: str) -> list[dict[str, Any]]:
        return [
            obj.raw
            for (resource, _, _), obj in self.objects.items()
            if not obj.deleted
            and getattr(resource, "group", None) == RBAC_GROUP
            and getattr(resource, "plural", None) == plural
        ]

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        refusal = refusal_of(request, self._stored_rbac)
        if refusal is not None:
            return await self._render_error(refusal)
        return await self._handle_authorized(request)

    async def _handle_authorized(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
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
        wanted_name = request.name or name_from_selector(request.params.get("fieldSelector"))
        return (
            resource == request.resource
            and (request.namespace is None or namespace == request.namespace)
            and (wanted_name is None or name == wanted_name)
        )

    def _current(self, request: rendering.Request) -> list[dict[str, Any]]:
        selector = request.params.get("labelSelector")
        return [
            copy.deepcopy(obj.raw)
            for (resource, namespace, name), obj in self.objects.items()
            if not obj.deleted
            and self._matches(request, resource, namespace, name)
            and labels_match(selector, (obj.raw.get("metadata") or {}).get("labels") or {})
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
        self.watched_from.append(since)
        loop = asyncio.get_running_loop()
        limits = [float(request.params.get("timeoutSeconds") or 0) or None]
        if self.max_watch_s:
            limits.append(self.max_watch_s * random.uniform(1.0, 2.0))  # noqa: S311 (jitter, not secrecy)
        timeout = min((limit for limit in limits if limit), default=None)
        deadline = None if timeout is None else loop.time() + timeout
        bookmarks = request.params.get("allowWatchBookmarks") in ("true", "1")
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
        told, bookmarked_at = cursor, loop.time()
        epoch, injected = self.epoch, len(self.injected)
        while epoch == self.epoch:
            for event in self.injected[injected:]:
                yield event
            injected = len(self.injected)
            for change in [change for change in self.changes if change.resource_version > cursor]:
                cursor = change.resource_version
                if self._matches(request, change.resource, change.namespace, change.name):
                    yield {"type": change.kind, "object": copy.deepcopy(change.obj)}
                    told = cursor
            wait = None if deadline is None else deadline - loop.time()
            if bookmarks and cursor > told:
                due = bookmarked_at + self.bookmark_interval_s - loop.time()
                if due <= 0:
                    yield {"type": "BOOKMARK", "object": self._bookmark(request, cursor)}
                    told, bookmarked_at = cursor, loop.time()
                    self.bookmarked.append(str(cursor))
                else:
                    wait = due if wait is None else min(wait, due)
            if deadline is not None and loop.time() >= deadline:
                return
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), wait)

    @staticmethod
    def _bookmark(request: rendering.Request, resource_version: int) -> dict[str, Any]:
        """A BOOKMARK's object as kube-apiserver sends it: the kind's shell, carrying only a version."""
        resource = request.resource
        group, version = (resource.group or "", resource.version or "v1") if resource else ("", "v1")
        return {
            "apiVersion": f"{group}/{version}" if group else version,
            "metadata": {"resourceVersion": str(resource_version), "creationTimestamp": None},
        }

    async def inject(self, event: dict[str, Any]) -> None:
        """Send ``event`` as it is to every open watch (a stand-in for what a client does not expect)."""
        self.injected.append(event)
        async with self.changed:
            self.changed.notify_all()

    async def compact(self) -> None:
        """Forget every change so far and end open watches: resuming from an old version is 410 Gone."""
        self.changes.clear()
        self.oldest_kept = self.current_revision + 1
        self.epoch += 1
        async with self.changed:
            self.changed.notify_all()


class KubeEmulator:
    """Runs the emulator on a free loopback port and writes an admin kubeconfig for it.

    ``bookmark_interval_s`` and ``max_watch_s`` are :class:`VersionedEmulator`'s; :meth:`kubeconfig_for`
    writes a kubeconfig that authenticates as a ServiceAccount, as a pod's mounted token does.
    """

    def __init__(
        self,
        folder: Path,
        kubernetes_version: str = "1.34.0",
        *,
        bookmark_interval_s: float = 0.0,
        max_watch_s: float | None = None,
    ) -> None:
        self.folder = folder
        self.kubeconfig = folder / "kubeconfig.yaml"
        self.kubernetes_version = kubernetes_version
        self.bookmark_interval_s = bookmark_interval_s
        self.max_watch_s = max_watch_s
        self.emulator: VersionedEmulator | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        emulator = VersionedEmulator()
        emulator.kubernetes_version = self.kubernetes_version
        emulator.bookmark_interval_s = self.bookmark_interval_s
        emulator.max_watch_s = self.max_watch_s
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
        self._write_kubeconfig(self.kubeconfig, ADMIN_TOKEN)
        return self

    def _write_kubeconfig(self, path: Path, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self._url}}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "user"}}],
            "current-context": "emulator",
        }
        path.write_text(yaml.safe_dump(config))

    def kubeconfig_for(self, namespace: str, service_account: str) -> Path:
        """A kubeconfig that authenticates as ``service_account``: it may do what its Roles grant."""
        path = self.folder / f"kubeconfig-{namespace}-{service_account}.yaml"
        self._write_kubeconfig(path, service_account_token(namespace, service_account))
        return path

    @property
    def url(self) -> str:
        """The API server's base URL."""
        return self._url

    def compact(self) -> None:
        """Compact the history now (see :meth:`VersionedEmulator.compact`)."""
        assert self.emulator is not None
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.emulator.compact(), self.loop).result(10)

    def inject(self, event: dict[str, Any]) -> None:
        """Send ``event`` to every open watch (see :meth:`VersionedEmulator.inject`)."""
        assert self.emulator is not None
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.emulator.inject(event), self.loop).result(10)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
