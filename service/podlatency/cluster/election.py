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
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from podlatency.cluster.api import (
    API_FAILURES,
    HTTP_CONFLICT,
    HTTP_NOT_FOUND,
    REQUEST_TIMEOUT_S,
    describe_failure,
)
from podlatency.metrics import service_metrics
from podlatency.settings import check_lease_timings

logger = logging.getLogger(__name__)
# kubernetes.leaderelection logs every renewal at INFO (one line every retry period, for ever); we
# log leadership changes ourselves (LeaderElected, LeaderLost), so only its warnings are kept.
logging.getLogger("leaderelection").setLevel(logging.WARNING)


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
    """The official LeaseLock on our API client, made safe to run for as long as the process runs.

    - Every call has a timeout, and no failure escapes: ``kubernetes.leaderelection`` catches only
      ``ApiException``, so a refused connection or a timeout would end its loop, and our campaign.
    - A failure is logged on one line (the official lock logs the whole response, headers and all).
    - ``spec.leaseTransitions`` counts leader changes, as client-go does (the official lock never
      sets it).
    - Once stopping, every call fails: ``kubernetes.leaderelection`` has no stop, and failing its
      renewals makes it step down.
    """

    def __init__(self, api: client.ApiClient, name: str, namespace: str, identity: str) -> None:
        super().__init__(name, namespace, identity)
        self.api_instance = client.CoordinationV1Api(api)
        self.stopping = threading.Event()

    def get(self, name: str, namespace: str) -> tuple[bool, Any]:
        if self.stopping.is_set():
            return False, ApiException(status=0, reason="stopping")
        try:
            lease = self.api_instance.read_namespaced_lease(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as error:
            if error.status != HTTP_NOT_FOUND:
                self._failed("read", error)
            return False, error  # leaderelection creates the Lease only on a 404 body
        except Exception as error:  # see the class docstring
            self._failed("read", error)
            return False, ApiException(status=0, reason=describe_failure(error))
        self.lease_reference = lease
        return True, self.get_lock_object(lease)

    def create(self, name: str, namespace: str, election_record: Any) -> bool:
        if self.stopping.is_set():
            return False
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            spec=self.get_lease_spec(election_record),
        )
        try:
            self.lease_reference = self.api_instance.create_namespaced_lease(
                namespace, body, _request_timeout=REQUEST_TIMEOUT_S
            )
        except Exception as error:  # see the class docstring
            self._failed("create", error)
            return False
        return True

    def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        if self.stopping.is_set() or self.lease_reference is None:
            return False
        lease = self.lease_reference
        lease.spec = self.get_lease_spec(updated_record, lease.spec)
        try:
            self.lease_reference = self.api_instance.replace_namespaced_lease(
                name, namespace, lease, _request_timeout=REQUEST_TIMEOUT_S
            )
        except Exception as error:  # see the class docstring
            self._failed("renew" if lease.spec.holder_identity == self.identity else "update", error)
            return False
        return True

    def get_lease_spec(self, leader_election_record: Any, current_spec: Any = None) -> Any:
        previous_holder = current_spec.holder_identity if current_spec is not None else None
        transitions = (current_spec.lease_transitions or 0) if current_spec is not None else 0
        spec = super().get_lease_spec(leader_election_record, current_spec)
        if current_spec is not None and previous_holder != spec.holder_identity:
            transitions += 1  # acquired from another holder, or after a release
        spec.lease_transitions = transitions
        return spec

    def _failed(self, what: str, error: BaseException) -> None:
        conflict = isinstance(error, ApiException) and error.status == HTTP_CONFLICT
        level = logging.DEBUG if conflict else logging.WARNING  # a conflict is another trainer's renewal
        logger.log(level, "could not %s the Lease %s: %s", what, self.name, describe_failure(error))


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
        """Campaign until :meth:`stop`: nothing that goes wrong in one election ends the next."""
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
            try:
                election.run()  # returns once leadership is lost; then campaign again
            except Exception:  # a bug in one election must not end the campaign
                logger.exception("leader election failed; campaigning again")
                self._stopped()
                self._lock.stopping.wait(self.timings.retry_period_s)

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
            logger.warning(
                "could not release the Lease (a standby takes over when it expires): %s",
                describe_failure(error),
            )
