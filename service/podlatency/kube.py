"""The operator-style loops, with the official ``kubernetes`` client.

- :class:`RolloutConfigMap` — the ConfigMap that declares the model version every replica serves
  (``data.version``, ``data.sha256``, ``data.url``). Predictors and trainers watch it, resuming from
  the last ``resourceVersion`` and re-listing when the API server answers 410 Gone. The leader
  trainer publishes into it with an optimistic-concurrency replace, and never over a ConfigMap
  that carries the pin annotation (``podlatency.io/pinned: "true"``).
- :class:`LeaseElection` — leader election on a ``coordination.k8s.io`` Lease with
  ``kubernetes.leaderelection`` and its ``LeaseLock``, so one trainer of several publishes.
- :class:`KubeEvents` — rollouts, failures and leadership changes as Kubernetes Events on the
  ConfigMap (``kubectl describe configmap`` lists them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from podlatency.bundle import ModelBundle
from podlatency.dataplane import PredictionService
from podlatency.errors import ClusterUnavailable, PodlatencyError
from podlatency.metrics import service_metrics
from podlatency.rollout import EventType, ModelFollower, RolloutRecord, log_event
from podlatency.samples import SampleStore
from podlatency.settings import Settings, check_lease_timings

logger = logging.getLogger(__name__)

PINNED_ANNOTATION = "podlatency.io/pinned"
LEADER_LABEL = "podlatency.io/leader"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
HTTP_NOT_FOUND, HTTP_CONFLICT, HTTP_GONE = 404, 409, 410
PUBLISH_ATTEMPTS = 5


def api_client() -> client.ApiClient:
    """A client for the cluster this process runs in, else for the current kubeconfig context."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def current_namespace(configured: str) -> str:
    """The configured namespace, else this pod's (from its service account), else ``default``."""
    if configured:
        return configured
    with contextlib.suppress(OSError):
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    return "default"


def default_identity(pod_name: str) -> str:
    """Who this process is in the Lease: the pod name, or host and process id outside a pod."""
    return pod_name or f"{socket.gethostname()}-{os.getpid()}"


class InvalidRollout(ValueError):
    """The ConfigMap declares a version without the fields needed to fetch and verify it."""


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
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                current = self.core.read_namespaced_config_map(self.name, self.namespace, _request_timeout=30)
            except ApiException as error:
                if error.status != HTTP_NOT_FOUND or replace_url_only:
                    raise
                body = client.V1ConfigMap(
                    metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                    data={"version": record.version, "sha256": record.sha256, "url": record.url},
                )
                try:
                    self.core.create_namespaced_config_map(self.namespace, body, _request_timeout=30)
                except ApiException as create_error:
                    if create_error.status == HTTP_CONFLICT:
                        continue  # created meanwhile: read it and decide again
                    raise
                return True
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
                data |= {"version": record.version, "sha256": record.sha256, "url": record.url}
            current.data = data
            try:
                # The read's resourceVersion travels with the body: a change since (a pin) is a 409.
                self.core.replace_namespaced_config_map(
                    self.name, self.namespace, current, _request_timeout=30
                )
            except ApiException as error:
                if error.status == HTTP_CONFLICT:
                    continue
                raise
            return True
        raise RuntimeError(f"{self.name} kept changing under {PUBLISH_ATTEMPTS} publish attempts")

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


class KubeEvents:
    """Reports events on the rollout ConfigMap, naming this pod; a failure to report is only logged."""

    def __init__(self, api: client.ApiClient, namespace: str, configmap: str, reporter: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.configmap = configmap
        self.reporter = reporter

    def __call__(self, event_type: EventType, reason: str, message: str) -> None:
        """Create one Event (and log it)."""
        log_event(event_type, reason, message)
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{self.configmap}.{time.time_ns():x}{secrets.token_hex(2)}", namespace=self.namespace
            ),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="ConfigMap", name=self.configmap, namespace=self.namespace
            ),
            reason=reason,
            message=f"{self.reporter}: {message}",
            type=event_type,
            source=client.V1EventSource(component="podlatency"),
            reporting_component="podlatency",
            reporting_instance=self.reporter,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self.core.create_namespaced_event(self.namespace, event, _request_timeout=10)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            logger.warning("could not record event %s: %s", reason, error)


@dataclass(frozen=True, slots=True)
class LeaseTimings:
    """Leader-election timings in whole seconds, as ``kubernetes.leaderelection`` needs them."""

    lease_duration_s: int = 15
    renew_deadline_s: int = 10
    retry_period_s: int = 2

    def validate(self) -> None:
        """Refuse what ``kubernetes.leaderelection`` would answer with ``sys.exit``."""
        check_lease_timings(self.lease_duration_s, self.renew_deadline_s, self.retry_period_s)


class _StoppableLeaseLock(LeaseLock):
    """The official LeaseLock on our API client, which fails every call once stopping.

    ``kubernetes.leaderelection`` has no stop: failing its renewals makes it step down.
    """

    def __init__(self, api: client.ApiClient, name: str, namespace: str, identity: str) -> None:
        super().__init__(name, namespace, identity)
        self.api_instance = client.CoordinationV1Api(api)
        self.stopping = threading.Event()

    def get(self, name: str, namespace: str) -> tuple[bool, Any]:
        if self.stopping.is_set():
            return False, None
        result: tuple[bool, Any] = super().get(name, namespace)
        return result

    def create(self, name: str, namespace: str, election_record: Any) -> bool:
        return not self.stopping.is_set() and bool(super().create(name, namespace, election_record))

    def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        return not self.stopping.is_set() and bool(super().update(name, namespace, updated_record))


class LeaseElection:
    """Campaigns for a Lease on a daemon thread; calls back when this process starts or stops leading."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        timings: LeaseTimings,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
    ) -> None:
        timings.validate()
        self.identity = identity
        self.timings = timings
        self._lock = _StoppableLeaseLock(api, name, namespace, identity)
        self._coordination = client.CoordinationV1Api(api)
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._leading = threading.Event()
        self._thread = threading.Thread(target=self._campaign, name="podlatency-leader-election", daemon=True)

    @property
    def is_leader(self) -> bool:
        """Whether this process holds the Lease now."""
        return self._leading.is_set()

    def start(self) -> None:
        """Start campaigning."""
        self._thread.start()

    def _campaign(self) -> None:
        while not self._lock.stopping.is_set():
            election = leaderelection.LeaderElection(
                electionconfig.Config(
                    self._lock,
                    lease_duration=self.timings.lease_duration_s,
                    renew_deadline=self.timings.renew_deadline_s,
                    retry_period=self.timings.retry_period_s,
                    onstarted_leading=self._started,
                    onstopped_leading=self._stopped,
                )
            )
            election.run()  # returns once leadership is lost; then campaign again

    def _started(self) -> None:
        if self._lock.stopping.is_set():
            return
        self._leading.set()
        service_metrics().leader.set(1)
        self._on_started()

    def _stopped(self) -> None:
        if not self._leading.is_set():
            return
        self._leading.clear()
        service_metrics().leader.set(0)
        self._on_stopped()

    def stop(self) -> None:
        """Stop campaigning; a leader steps down and releases the Lease so a standby takes over at once."""
        self._lock.stopping.set()
        if not self._leading.is_set():
            return
        self._stopped()
        try:
            lease = self._coordination.read_namespaced_lease(
                self._lock.name, self._lock.namespace, _request_timeout=5
            )
            if lease.spec is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.lease_duration_seconds = 1
                self._coordination.replace_namespaced_lease(
                    self._lock.name, self._lock.namespace, lease, _request_timeout=5
                )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            logger.warning("could not release the Lease (a standby takes over when it expires): %s", error)


def label_pod(api: client.ApiClient, namespace: str, pod_name: str, *, leader: bool) -> None:
    """Mark (or unmark) this pod as the leader, so the trainer Service routes samples only to it."""
    if not pod_name:
        return
    patch = {"metadata": {"labels": {LEADER_LABEL: "true" if leader else None}}}
    try:
        client.CoreV1Api(api).patch_namespaced_pod(pod_name, namespace, patch, _request_timeout=10)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
        logger.warning("could not %s pod %s: %s", "label" if leader else "unlabel", pod_name, error)


class ClusterRollout:
    """One process's part in its release's rollout.

    Every role follows the ConfigMap. Trainers also campaign for the Lease; the leader labels its
    pod (the trainer Service selects the label, so samples reach the leader), declares a version
    when the ConfigMap has none, and publishes what the retrainer produces.
    """

    def __init__(
        self,
        settings: Settings,
        service: PredictionService,
        samples: SampleStore | None,
        api: client.ApiClient | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.samples = samples
        self.api = api or api_client()
        self.namespace = current_namespace(settings.namespace)
        self.identity = default_identity(settings.pod_name)
        self.configmap = RolloutConfigMap(self.api, self.namespace, settings.rollout_configmap)
        self.events = KubeEvents(self.api, self.namespace, settings.rollout_configmap, self.identity)
        self.follower = ModelFollower(service, self.events)
        self.election: LeaseElection | None = None
        if samples is not None:
            self.election = LeaseElection(
                self.api,
                namespace=self.namespace,
                name=f"{settings.rollout_configmap}-leader",
                identity=self.identity,
                timings=LeaseTimings(
                    settings.lease_duration_s, settings.lease_renew_deadline_s, settings.lease_retry_period_s
                ),
                on_started=self._started_leading,
                on_stopped=self._stopped_leading,
            )
        self._thread = threading.Thread(target=self._follow, name="podlatency-rollout-watch", daemon=True)

    # -- following ---------------------------------------------------------------------------------

    def sync_once(self) -> bool:
        """Apply what the ConfigMap declares now; True when that version is in service."""
        try:
            configmap, _ = self.configmap.read()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            logger.warning("cannot read ConfigMap %s: %s", self.settings.rollout_configmap, error)
            return False
        return self._apply(configmap)

    def _apply(self, configmap: Any | None) -> bool:
        if configmap is None:
            return False
        try:
            record = record_from(configmap)
        except InvalidRollout as error:
            self.events("Warning", "InvalidRollout", str(error))
            return False
        return record is not None and self.follower.apply(record)

    def _follow(self) -> None:
        # Between watches, a failed rollout is tried again (apply returns at once when it is in service).
        self.configmap.follow(self._apply, self.follower.retry, self.settings.watch_timeout_s)

    def start(self) -> None:
        """Follow the ConfigMap and (trainers) campaign, on daemon threads."""
        self._thread.start()
        if self.election is not None:
            self.election.start()

    def stop(self) -> None:
        """Stop following; a leading trainer steps down and releases the Lease."""
        self.configmap.stop()
        if self.election is not None:
            self.election.stop()

    # -- leading (trainers) -------------------------------------------------------------------------

    def leads(self) -> bool:
        """Whether this trainer holds the Lease."""
        return self.election is not None and self.election.is_leader

    def record_for(self, version: str) -> RolloutRecord:
        """The record that declares a stored version, fetched from this trainer."""
        base = self.settings.publish_url or f"http://{self.settings.host}:{self.settings.port}"
        sha256 = self.service.registry.archive_sha256(version)
        return RolloutRecord(version, sha256, f"{base.rstrip('/')}/v1/models/{version}/bundle")

    def publish(self, bundle: ModelBundle) -> bool:
        """Store ``bundle`` and declare it (the watch then swaps it in here too); False when pinned."""
        self.service.registry.save(bundle, activate=False)
        try:
            published = self.configmap.publish(self.record_for(bundle.version))
        except (ApiException, urllib3.exceptions.HTTPError, OSError, RuntimeError) as error:
            detail = getattr(error, "reason", None) or str(error)
            raise ClusterUnavailable(
                f"model {bundle.version} is stored but could not be declared in "
                f"{self.settings.rollout_configmap}: {detail}"
            ) from None
        if published:
            self.events("Normal", "ModelPublished", f"declared model {bundle.version}")
        return published

    def _started_leading(self) -> None:
        self.events("Normal", "LeaderElected", "now the leader trainer")
        label_pod(self.api, self.namespace, self.settings.pod_name, leader=True)
        if self.samples is not None:
            self.samples.reload()  # a shared volume may hold what the previous leader accepted
        current = self.service.holder.current_or_none()
        try:
            configmap, _ = self.configmap.read()
            declared = record_from(configmap) if configmap is not None else None
            if declared is None and current is not None:
                self.publish(current.bundle)
            elif declared is not None and declared.version in self.service.registry.versions():
                # Serve the declared archive from here: the previous leader's address may be gone.
                self.configmap.publish(self.record_for(declared.version), replace_url_only=True)
        except (ApiException, InvalidRollout, PodlatencyError, urllib3.exceptions.HTTPError, OSError) as err:
            logger.warning("as the new leader, could not update %s: %s", self.settings.rollout_configmap, err)

    def _stopped_leading(self) -> None:
        label_pod(self.api, self.namespace, self.settings.pod_name, leader=False)
        self.events("Normal", "LeaderLost", "no longer the leader trainer")
