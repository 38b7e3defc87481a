"""The ConfigMap that declares the model version of a release: read, watched, published into.

Predictors and trainers watch it, resuming from the last ``resourceVersion`` (which BOOKMARK events
move on) and re-listing when the API server answers 410 Gone or anything else goes wrong: the watch
thread ends only when the process stops. The leader trainer publishes into it with an
optimistic-concurrency replace, and never over a ConfigMap that carries the pin annotation
(``podlatency.io/pinned: "true"``).
The leader also names its own address in it (``podlatency.io/leader-url``), so that standby trainers
forward the samples they receive to it: trainers need no rights over pods. Trainers may not create
the ConfigMap (the chart does): RBAC cannot limit ``create`` to one name.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from podlatency.cluster.api import (
    API_FAILURES,
    HTTP_CONFLICT,
    HTTP_GONE,
    HTTP_NOT_FOUND,
    REQUEST_TIMEOUT_S,
    describe_failure,
)
from podlatency.errors import ClusterUnavailable, InvalidRollout, RolloutConfigMapMissing
from podlatency.follower import RolloutRecord
from podlatency.metrics import service_metrics

logger = logging.getLogger(__name__)

PINNED_ANNOTATION = "podlatency.io/pinned"
LEADER_ANNOTATION = "podlatency.io/leader-url"
PUBLISH_ATTEMPTS = 5
WATCH_MIN_S = 1.0
WATCH_BACKOFF_MAX_S = 30.0


class WatchEventError(Exception):
    """A watch delivered an event the follow loop does not know (it resyncs by listing again)."""


def bookmark_version(raw_object: object) -> str | None:
    """The resourceVersion a BOOKMARK event carries (its object is a plain dict, not a model)."""
    metadata = raw_object.get("metadata") if isinstance(raw_object, dict) else None
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return str(version) if version else None


def leader_url_from(configmap: client.V1ConfigMap) -> str | None:
    """The leader trainer's address the ConfigMap names, if any."""
    metadata = configmap.metadata
    annotations = (metadata.annotations if metadata is not None else None) or {}
    url = str(annotations.get(LEADER_ANNOTATION, "")).strip()
    return url or None


def record_from(configmap: client.V1ConfigMap) -> RolloutRecord | None:
    """The rollout record a ConfigMap declares; ``None`` when it declares no version yet."""
    data = configmap.data or {}
    version = str(data.get("version", "")).strip()
    if not version:
        return None
    missing = [key for key in ("sha256", "url") if not str(data.get(key, "")).strip()]
    if missing:
        raise InvalidRollout(f"version {version} is declared without {' and '.join(missing)}")
    metadata = configmap.metadata
    annotations = (metadata.annotations if metadata is not None else None) or {}
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
        self.watching = False
        """Whether :meth:`follow` has the ConfigMap's current state and a watch on it (else it resyncs)."""

    def read(self) -> tuple[client.V1ConfigMap | None, str]:
        """The ConfigMap (``None`` when absent) and the list's resourceVersion to watch from."""
        listing = self.core.list_namespaced_config_map(
            self.namespace, field_selector=f"metadata.name={self.name}", _request_timeout=REQUEST_TIMEOUT_S
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

        def change(current: client.V1ConfigMap) -> bool:
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

        return self._modify(change, "declare a model version")

    def announce_leader(self, url: str | None, *, only_if: str | None = None) -> bool:
        """Name ``url`` as the leader's address; with ``None``, clear it if it still names ``only_if``."""

        def change(current: client.V1ConfigMap) -> bool:
            metadata = current.metadata or self._metadata()
            annotations = dict(metadata.annotations or {})
            if url is None:
                if annotations.get(LEADER_ANNOTATION) != only_if:
                    return False  # another trainer leads by now
                del annotations[LEADER_ANNOTATION]
            elif annotations.get(LEADER_ANNOTATION) == url:
                return False
            else:
                annotations[LEADER_ANNOTATION] = url
            metadata.annotations = annotations
            current.metadata = metadata
            return True

        return self._modify(change, "name the leader")

    def missing(self) -> RolloutConfigMapMissing:
        """The error for an absent ConfigMap: what is missing, why trainers do not recreate it, the fix."""
        return RolloutConfigMapMissing(
            f"ConfigMap {self.name} does not exist in namespace {self.namespace}, so no model version "
            "can be declared; every pod keeps serving the model it has. Trainers may not create "
            "ConfigMaps (RBAC cannot limit create to one name): restore it with `helm upgrade` of the "
            "release that installed podlatency"
        )

    def _metadata(self) -> client.V1ObjectMeta:
        return client.V1ObjectMeta(name=self.name, namespace=self.namespace)

    def _modify(self, change: Callable[[client.V1ConfigMap], bool], what: str) -> bool:
        """Read the ConfigMap, ``change`` it in place and replace it; True when it was written.

        ``change`` answers False to leave it as it is. The read's resourceVersion travels with the
        replace, so a change made since (a pin) is a 409, and it is read again. An absent ConfigMap
        is :class:`RolloutConfigMapMissing`; any other refusal a :class:`ClusterUnavailable` that
        names the ConfigMap and what the API server said (for a 403, the missing right).
        """
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                current = self.core.read_namespaced_config_map(
                    self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
                )
                if not change(current):
                    return False
                self.core.replace_namespaced_config_map(
                    self.name, self.namespace, current, _request_timeout=REQUEST_TIMEOUT_S
                )
            except ApiException as error:
                if error.status == HTTP_NOT_FOUND:
                    raise self.missing() from None
                if error.status == HTTP_CONFLICT:
                    continue  # changed since it was read: read it and decide again
                raise self._refused(what, error) from None
            except API_FAILURES as error:
                raise self._refused(what, error) from None
            return True
        raise ClusterUnavailable(f"{self.name} kept changing under {PUBLISH_ATTEMPTS} attempts to {what}")

    def _refused(self, what: str, error: BaseException) -> ClusterUnavailable:
        return ClusterUnavailable(
            f"could not {what} in ConfigMap {self.name} (namespace {self.namespace}): "
            f"{describe_failure(error)}"
        )

    def follow(
        self,
        on_change: Callable[[client.V1ConfigMap | None], object],
        on_quiet: Callable[[], object],
        timeout_s: int,
    ) -> None:
        """Call ``on_change`` with the ConfigMap now and on every change (``None``: absent) until stopped.

        Each watch asks the server to end it after ``timeout_s``; ``on_quiet`` runs between watches
        (a place to retry a failed rollout). A watch resumes from the last resourceVersion seen, which
        BOOKMARK events move on without a change. Nothing ends this loop but :meth:`stop`: on 410 Gone
        (that version is too old for the server) the ConfigMap is listed again at once, and on any
        other failure, expected or not, it is logged on one line and listed again after a backoff.
        """
        resource_version = ""
        failures = 0
        while not self._stopped.is_set():
            started = time.monotonic()
            try:
                if not resource_version:
                    configmap, resource_version = self.read()
                    self._set_watching(True)
                    self._guarded(functools.partial(on_change, configmap), "applying the rollout ConfigMap")
                resource_version = self._watch_once(on_change, resource_version, timeout_s)
                failures = 0
                self._guarded(on_quiet, "retrying the declared rollout")
                # A watch the server ended at once (no error, no events) is not retried in a busy loop.
                pause = max(0.0, WATCH_MIN_S - (time.monotonic() - started))
            except Exception as error:  # any failure, foreseen or not, must not end the loop
                resource_version = ""  # list again
                refused = isinstance(error, ApiException)
                if isinstance(error, ApiException) and error.status == HTTP_GONE:
                    logger.info("watch of ConfigMap %s expired (410 Gone); listing it again", self.name)
                    continue
                failures += 1
                pause = self._backoff(failures)
                cause = describe_failure(error)
                self._failed(cause if refused else f"{type(error).__name__}: {cause}", pause)
            self._stopped.wait(pause)
        self._set_watching(False)

    def _watch_once(
        self, on_change: Callable[[client.V1ConfigMap | None], object], resource_version: str, timeout_s: int
    ) -> str:
        """One watch from ``resource_version``, until the server ends it; returns the last version seen."""
        self._watch = watch.Watch()
        for event in self._watch.stream(
            self.core.list_namespaced_config_map,
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            resource_version=resource_version,
            timeout_seconds=timeout_s,
            allow_watch_bookmarks=True,
            _request_timeout=timeout_s + REQUEST_TIMEOUT_S,
        ):
            if self._stopped.is_set():
                break
            if not isinstance(event, dict):
                continue  # the client yields None for a blank line
            kind = event.get("type")
            if kind == "BOOKMARK":
                # The client hands a bookmark's object over as a plain dict: it only moves the version on.
                resource_version = bookmark_version(event.get("raw_object")) or resource_version
                continue
            metadata = getattr(event.get("object"), "metadata", None)
            if kind not in ("ADDED", "MODIFIED", "DELETED") or metadata is None:
                raw = str(event.get("raw_object"))[:200]
                raise WatchEventError(f"unexpected watch event {kind!r}: {raw}")
            resource_version = str(metadata.resource_version or resource_version)
            changed = None if kind == "DELETED" else event["object"]
            self._guarded(functools.partial(on_change, changed), "applying a change of the rollout ConfigMap")
        return resource_version

    def _failed(self, cause: str, pause: float) -> None:
        self._set_watching(False)
        logger.warning(
            "watching ConfigMap %s failed (%s); listing it again in %.1f s", self.name, cause, pause
        )

    @staticmethod
    def _backoff(failures: int) -> float:
        return min(WATCH_BACKOFF_MAX_S, 0.5 * 2.0 ** min(failures, 10))

    def _set_watching(self, watching: bool) -> None:
        self.watching = watching
        service_metrics().rollout_watching.set(1 if watching else 0)

    @staticmethod
    def _guarded(action: Callable[[], object], what: str) -> None:
        try:
            action()
        except Exception:  # a bug in applying one change must not end the watch for good
            logger.exception("%s failed", what)

    def stop(self) -> None:
        """End :meth:`follow` (at the next event, or when the server ends the current watch)."""
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()
