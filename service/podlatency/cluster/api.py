"""Reaching the Kubernetes API: the client, this pod's namespace and identity, the errors that pass."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
HTTP_NOT_FOUND, HTTP_CONFLICT, HTTP_GONE = 404, 409, 410
API_FAILURES = (ApiException, urllib3.exceptions.HTTPError, OSError)
"""What a call to the API server raises when it is refused or cannot be made."""


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
