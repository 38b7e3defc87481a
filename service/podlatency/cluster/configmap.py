"""The ConfigMap that declares the model version of a release: read, watched, published into.

Predictors and trainers watch it, resuming from the last ``resourceVersion`` and re-listing when the
API server answers 410 Gone. The leader trainer publishes into it with an optimistic-concurrency
replace, and never over a ConfigMap that carries the pin annotation (``podlatency.io/pinned: "true"``).
The leader also names its own address in it (``podlatency.io/leader-url``), so that standby trainers
forward the samples they receive to it: trainers need no rights over pods.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from podlatency.cluster.api import HTTP_CONFLICT, HTTP_GONE, HTTP_NOT_FOUND
from podlatency.cluster.follower import RolloutRecord
from podlatency.errors import ClusterUnavailable, InvalidRollout

logger = logging.getLogger(__name__)

PINNED_ANNOTATION = "podlatency.io/pinned"
LEADER_ANNOTATION = "podlatency.io/leader-url"
PUBLISH_ATTEMPTS = 5


def leader_url_from(configmap: Any) -> str | None:
    """The leader trainer's address the ConfigMap names, if any."""
    metadata = configmap.metadata
    annotations = (metadata.annotations if metadata is not None else None) or {}
    url = str(annotations.get(LEADER_ANNOTATION, "")).strip()
    return url or None


def record_from(configmap: Any) -> RolloutRecord | None:
    """The rollout record a ConfigMap declares; ``None`` when it declares no version yet."""
    data = configmap.data or {}
    version = str(data.get("version", "")).strip()
    if not version:
        return None
    missing = [key for key in ("sha256", "url") if not str(data.get(key, "")).strip()]
    if missing:
        raise InvalidRollout(f"version {version} is declared without {' and '.join(missing)}")
    annotations = configmap.metadata.annotations or {}
    return RolloutRecord(
        version=version,
        sha256=str(data["sha256"]).strip(),
        url=str(data["url"]).strip(),
        pinned=str(annotations.get(PINNED_ANNOTATION, "")).strip().lower() == "true",
    )


class RolloutConfigMap:
    """One ConfigMap that declares the model version of a release."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name
        self._watch: watch.Watch | None = None
        self._stopped = threading.Event()

    def read(self) -> tuple[Any | None, str]:
        """The ConfigMap (``None`` when absent) and the list's resourceVersion to watch from."""
        listing = self.core.list_namespaced_config_map(
            self.namespace, field_selector=f"metadata.name={self.name}", _request_timeout=30
        )
        items = listing.items or []
        resource_version = listing.metadata.resource_version if listing.metadata is not None else None
        return (items[0] if items else None), str(resource_version or "")

    def publish(self, record: RolloutRecord, *, replace_url_only: bool = False) -> bool:
        """Declare ``record``; False, changing nothing, when the ConfigMap is pinned.

        With ``replace_url_only`` only the URL of the version already declared is updated (a new
        leader serves the archive from its own address), and a pin does not stop that.
        """
        declared = {"version": record.version, "sha256": record.sha256, "url": record.url}

        def change(current: Any) -> bool:
            annotations = (current.metadata.annotations if current.metadata is not None else None) or {}
            data = dict(current.data or {})
            if replace_url_only:
                if data.get("version") != record.version or data.get("sha256") != record.sha256:
                    return False
                data["url"] = record.url
            elif str(annotations.get(PINNED_ANNOTATION, "")).strip().lower() == "true":
                logger.info("%s is pinned to %s; not publishing %s", self.name, data.get("version"), record)
                return False
            else:
                data |= declared
            current.data = data
            return True

        created = None if replace_url_only else client.V1ConfigMap(metadata=self._metadata(), data=declared)
        return self._modify(change, created, "publish")

    def announce_leader(self, url: str | None, *, only_if: str | None = None) -> None:
        """Name ``url`` as the leader's address; with ``None``, clear it if it still names ``only_if``."""

        def change(current: Any) -> bool:
            metadata = current.metadata or self._metadata()
            annotations = dict(metadata.annotations or {})
            if url is None:
                if annotations.get(LEADER_ANNOTATION) != only_if:
                    return False  # another trainer leads by now
                del annotations[LEADER_ANNOTATION]
            else:
                annotations[LEADER_ANNOTATION] = url
            metadata.annotations = annotations
            current.metadata = metadata
            return True

        created = None
        if url is not None:
            created = client.V1ConfigMap(metadata=self._metadata({LEADER_ANNOTATION: url}))
        self._modify(change, created, "name the leader")

    def _metadata(self, annotations: dict[str, str] | None = None) -> client.V1ObjectMeta:
        return client.V1ObjectMeta(name=self.name, namespace=self.namespace, annotations=annotations)

    def _modify(self, change: Callable[[Any], bool], created: Any | None, what: str) -> bool:
        """Read the ConfigMap, ``change`` it in place and replace it; True when it was written.

        ``change`` answers False to leave it as it is. The read's resourceVersion travels with the
        replace, so a change made since (a pin) is a 409, and it is read again. With no ConfigMap,
        ``created`` is created (``None``: the 404 is raised).
        """
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                current = self.core.read_namespaced_config_map(self.name, self.namespace, _request_timeout=30)
            except ApiException as error:
                if error.status != HTTP_NOT_FOUND or created is None:
                    raise
                try:
                    self.core.create_namespaced_config_map(self.namespace, created, _request_timeout=30)
                except ApiException as create_error:
                    if create_error.status == HTTP_CONFLICT:
                        continue  # created meanwhile: read it and decide again
                    raise
                return True
            if not change(current):
                return False
            try:
                self.core.replace_namespaced_config_map(
                    self.name, self.namespace, current, _request_timeout=30
                )
            except ApiException as error:
                if error.status == HTTP_CONFLICT:
                    continue
                raise
            return True
        raise ClusterUnavailable(f"{self.name} kept changing under {PUBLISH_ATTEMPTS} attempts to {what}")

    def follow(
        self,
        on_change: Callable[[Any | None], object],
        on_quiet: Callable[[], object],
        timeout_s: int,
    ) -> None:
        """Call ``on_change`` with the ConfigMap now and on every change, until :meth:`stop`.

        Each watch asks the server to end it after ``timeout_s``; ``on_quiet`` runs between watches
        (a place to retry a failed rollout). A watch resumes from the last resourceVersion seen; on
        410 Gone (that version is too old for the server) the ConfigMap is listed again.
        """
        resource_version = ""
        failures = 0
        while not self._stopped.is_set():
            try:
                if not resource_version:
                    configmap, resource_version = self.read()
                    self._deliver(on_change, configmap)
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    self.core.list_namespaced_config_map,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=resource_version,
                    timeout_seconds=timeout_s,
                    allow_watch_bookmarks=True,
                    _request_timeout=timeout_s + 30,
                ):
                    failures = 0
                    obj = event["object"]
                    resource_version = str(obj.metadata.resource_version or resource_version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._deliver(on_change, obj)
                    elif event["type"] == "DELETED":
                        self._deliver(on_change, None)
                    if self._stopped.is_set():
                        return
                on_quiet()
            except ApiException as error:
                if error.status == HTTP_GONE:
                    logger.info("watch of %s expired (410 Gone); listing it again", self.name)
                    resource_version = ""
                    continue
                failures += 1
                logger.warning("watching %s failed (%s %s); retrying", self.name, error.status, error.reason)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                failures += 1
                logger.warning("watching %s failed (%s); retrying", self.name, error)
            self._stopped.wait(min(30.0, 0.5 * 2**failures))

    @staticmethod
    def _deliver(on_change: Callable[[Any | None], object], configmap: Any | None) -> None:
        try:
            on_change(configmap)
        except Exception:  # a bug in applying one change must not end the watch for good
            logger.exception("applying a change of the rollout ConfigMap failed")

    def stop(self) -> None:
        """End :meth:`follow` (at the next event, or when the server ends the current watch)."""
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()
