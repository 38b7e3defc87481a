"""Rollouts, failures and leadership changes as Kubernetes Events on the rollout ConfigMap.

``kubectl describe configmap <release>-podlatency-model`` lists them.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime

from kubernetes import client

from podlatency.cluster.api import API_FAILURES, REQUEST_TIMEOUT_S, describe_failure
from podlatency.follower import EventType, log_event

logger = logging.getLogger(__name__)


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
            self.core.create_namespaced_event(self.namespace, event, _request_timeout=REQUEST_TIMEOUT_S)
        except API_FAILURES as error:
            logger.warning("could not record event %s: %s", reason, describe_failure(error))
