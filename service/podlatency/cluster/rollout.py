"""One process's part in its release's rollout: follow the ConfigMap, and (trainers) lead and publish."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from kubernetes import client

from podlatency.bundle import ModelBundle
from podlatency.cluster.api import (
    API_FAILURES,
    api_client,
    current_namespace,
    default_identity,
    describe_failure,
)
from podlatency.cluster.configmap import RolloutConfigMap, leader_url_from, record_from
from podlatency.cluster.election import LeaseElection, LeaseTimings
from podlatency.cluster.events import KubeEvents
from podlatency.errors import ClusterUnavailable, InvalidRollout, ModelLoadError
from podlatency.follower import ModelFollower, RolloutRecord
from podlatency.learning.samples import SampleStore
from podlatency.learning.training import EMBEDDED_DEFAULT_SOURCE
from podlatency.metrics import service_metrics
from podlatency.prediction_service import PredictionService, RolloutStatus
from podlatency.settings import Settings

logger = logging.getLogger(__name__)


class ClusterRollout:
    """One process's part in its release's rollout.

    Every role follows the ConfigMap. Trainers also campaign for the Lease. The leader names its
    address in the ConfigMap (standbys forward the samples they receive there) whenever the
    ConfigMap does not, publishes what the retrainer produces, and declares a version when the
    ConfigMap declares none: the one it serves, or else the newest it stores, if that was trained on
    observations. It never declares the untrained embedded default, which every pod trains alike.
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
        self.announced_leader: str | None = None
        """The leader's address as the ConfigMap names it (read by every role's watch)."""
        self.configmap_missing = False
        """Whether the last read or event found no ConfigMap (logged once until it is back)."""
        self._leader_record_lock = threading.Lock()
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
        service.rollout_status = self.status
        # Until the first read says otherwise: not watching, and no alert for what is not known yet.
        service_metrics().rollout_configmap_exists.set(1)
        service_metrics().rollout_watching.set(0)
        self.follower.check_drift()

    # -- following ---------------------------------------------------------------------------------

    def sync_once(self) -> bool:
        """Apply what the ConfigMap declares now; True when that version is in service."""
        try:
            configmap, _ = self.configmap.read()
        except Exception as error:  # the watch retries; start-up must go on
            logger.warning("cannot read ConfigMap %s: %s", self.configmap.name, describe_failure(error))
            return False
        return self._apply(configmap)

    def _apply(self, configmap: client.V1ConfigMap | None) -> bool:
        self._note_presence(configmap)
        if configmap is None:
            self.follower.declare(None)
            return False
        self.announced_leader = leader_url_from(configmap)
        try:
            record = record_from(configmap)
        except InvalidRollout as error:
            self.follower.declare(None)
            self.events("Warning", "InvalidRollout", str(error))
            return False
        self.follower.declare(record)
        if self.leads():
            self._keep_leader_record(configmap)
        return record is not None and self.follower.apply(record)

    def _note_presence(self, configmap: client.V1ConfigMap | None) -> None:
        """Say once, clearly, that the ConfigMap is gone and how to restore it; and when it is back."""
        missing = configmap is None
        service_metrics().rollout_configmap_exists.set(0 if missing else 1)
        if missing and not self.configmap_missing:
            logger.warning("%s", self.configmap.missing().detail)
        elif not missing and self.configmap_missing:
            logger.info("ConfigMap %s exists again; following what it declares", self.configmap.name)
        self.configmap_missing = missing

    def _follow(self) -> None:
        # Between watches, a failed rollout is tried again (apply returns at once when it is in service).
        self.configmap.follow(self._apply, self._retry, self.settings.watch_timeout_s)

    def _retry(self) -> None:
        self.follower.retry()
        self.follower.check_drift()

    def status(self) -> RolloutStatus:
        """The declared version beside the served one, for ``/status`` and ``/v1/model``."""
        matches = self.follower.check_drift()
        since = self.follower.mismatch_since
        declared = self.follower.declared
        return RolloutStatus(
            configmap=self.configmap.name,
            watching=self.configmap.watching,
            declared_version=declared.version if declared is not None else None,
            matches_declared=matches,
            mismatch_seconds=0.0 if since is None else round(max(0.0, time.time() - since), 3),
        )

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

    def own_url(self) -> str:
        """Where other pods reach this process (``PODLATENCY_PUBLISH_URL``)."""
        base = self.settings.publish_url or f"http://{self.settings.host}:{self.settings.port}"
        return base.rstrip("/")

    def leader_url(self) -> str | None:
        """Where samples go when this trainer does not lead: the leader the ConfigMap names, if another."""
        if self.leads():
            return None
        leader = self.announced_leader
        return leader if leader and leader != self.own_url() else None

    def record_for(self, version: str) -> RolloutRecord:
        """The record that declares a stored version, fetched from this trainer."""
        sha256 = self.service.registry.archive_sha256(version)
        return RolloutRecord(version, sha256, f"{self.own_url()}/v1/models/{version}/bundle")

    def publish(self, bundle: ModelBundle) -> bool:
        """Store ``bundle`` and declare it (the watch then swaps it in here too); False when pinned."""
        self.service.registry.save(bundle, activate=False)
        try:
            published = self.configmap.publish(self.record_for(bundle.version))
        except ClusterUnavailable as error:
            detail = f"model {bundle.version} is stored but was not declared: {error.detail}"
            raise type(error)(detail) from None
        if published:
            self.events("Normal", "ModelPublished", f"declared model {bundle.version}")
        return published

    def trained_version(self) -> str | None:
        """What a leader declares over an empty ConfigMap, if any.

        The version it serves, else the newest it stores, if trained on observations; ``None``
        while it has only the embedded default.
        """
        current = self.service.holder.current_or_none()
        registry = self.service.registry
        candidates = ([current.version] if current is not None else []) + registry.versions()[::-1]
        for version in candidates:
            with contextlib.suppress(ModelLoadError):
                if registry.metadata(version).get("source") != EMBEDDED_DEFAULT_SOURCE:
                    return version
        return None

    def _keep_leader_record(self, configmap: client.V1ConfigMap) -> None:
        """As the leader: name this trainer in the ConfigMap, and declare a version when none is.

        Both the watch thread and the election thread call this; the lock and a fresh read before
        declaring keep them from declaring twice.
        """
        with self._leader_record_lock:
            try:
                if leader_url_from(configmap) != self.own_url():
                    self.configmap.announce_leader(self.own_url())
                if self._declares_nothing(configmap):
                    fresh, _ = self.configmap.read()
                    version = self.trained_version()
                    published = (
                        version is not None
                        and self._declares_nothing(fresh)
                        and self.configmap.publish(self.record_for(version))
                    )
                    if published:
                        self.events("Normal", "ModelPublished", f"declared model {version} (none was)")
            except ClusterUnavailable as error:
                if not self.configmap_missing:
                    logger.warning("as the leader, could not update the rollout ConfigMap: %s", error.detail)
            except API_FAILURES as error:
                logger.warning(
                    "as the leader, could not read the rollout ConfigMap: %s", describe_failure(error)
                )

    @staticmethod
    def _declares_nothing(configmap: client.V1ConfigMap | None) -> bool:
        """The ConfigMap exists and declares no version (an admin's half-written record is left alone)."""
        if configmap is None:
            return False
        try:
            return record_from(configmap) is None
        except InvalidRollout:
            return False

    def _started_leading(self) -> None:
        self.events("Normal", "LeaderElected", "now the leader trainer")
        if self.samples is not None:
            self.samples.reload()  # a shared volume may hold what the previous leader accepted
        try:
            configmap, _ = self.configmap.read()
        except Exception as error:  # the watch names the leader once it can read
            logger.warning(
                "as the new leader, could not read ConfigMap %s: %s",
                self.configmap.name,
                describe_failure(error),
            )
            return
        self._note_presence(configmap)
        if configmap is None:
            return
        self._keep_leader_record(configmap)
        with contextlib.suppress(InvalidRollout, ClusterUnavailable):
            declared = record_from(configmap)
            if declared is not None and declared.version in self.service.registry.versions():
                # Serve the declared archive from here: the previous leader's address may be gone.
                self.configmap.publish(self.record_for(declared.version), replace_url_only=True)

    def _stopped_leading(self) -> None:
        try:
            self.configmap.announce_leader(None, only_if=self.own_url())
        except ClusterUnavailable as error:
            logger.warning("could not clear this trainer's leader address: %s", error.detail)
        self.events("Normal", "LeaderLost", "no longer the leader trainer")
