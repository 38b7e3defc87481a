"""Leader election among trainers on a ``coordination.k8s.io`` Lease.

It uses ``kubernetes.leaderelection`` and its ``LeaseLock``, so one trainer of several publishes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from podlatency.cluster.api import API_FAILURES
from podlatency.metrics import service_metrics
from podlatency.settings import check_lease_timings

logger = logging.getLogger(__name__)


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
        except API_FAILURES as error:
            logger.warning("could not release the Lease (a standby takes over when it expires): %s", error)
