"""One process's part in its release's rollout: follow the ConfigMap, and (trainers) lead and publish."""

from __future__ import annotations

import logging
import threading
from typing import Any

from kubernetes import client

from podlatency.bundle import ModelBundle
from podlatency.cluster.api import API_FAILURES, api_client, current_namespace, default_identity
from podlatency.cluster.configmap import RolloutConfigMap, leader_url_from, record_from
from podlatency.cluster.election import LeaseElection, LeaseTimings
from podlatency.cluster.events import KubeEvents
from podlatency.cluster.follower import ModelFollower, RolloutRecord
from podlatency.dataplane import PredictionService
from podlatency.errors import ClusterUnavailable, InvalidRollout, PodlatencyError
from podlatency.samples import SampleStore
from podlatency.settings import Settings

logger = logging.getLogger(__name__)


class ClusterRollout:
    """One process's part in its release's rollout.

    Every role follows the ConfigMap. Trainers also campaign for the Lease; the leader names its
    address in the ConfigMap (standbys forward the samples they receive there), declares a version
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
        self.announced_leader: str | None = None
        """The leader's address as the ConfigMap names it (read by every role's watch)."""
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
        except API_FAILURES as error:
            logger.warning("cannot read ConfigMap %s: %s", self.settings.rollout_configmap, error)
            return False
        return self._apply(configmap)

    def _apply(self, configmap: Any | None) -> bool:
        if configmap is None:
            return False
        self.announced_leader = leader_url_from(configmap)
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
        except (*API_FAILURES, ClusterUnavailable) as error:
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
        try:
            self.configmap.announce_leader(self.own_url())
        except (*API_FAILURES, ClusterUnavailable) as error:
            logger.warning("could not name this trainer as the leader in the ConfigMap: %s", error)
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
        except (*API_FAILURES, PodlatencyError) as err:
            logger.warning("as the new leader, could not update %s: %s", self.settings.rollout_configmap, err)

    def _stopped_leading(self) -> None:
        try:
            self.configmap.announce_leader(None, only_if=self.own_url())
        except (*API_FAILURES, ClusterUnavailable) as error:
            logger.warning("could not clear this trainer's leader address in the ConfigMap: %s", error)
        self.events("Normal", "LeaderLost", "no longer the leader trainer")
