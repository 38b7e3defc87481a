"""Reaching the Kubernetes API: the client, this pod's namespace and identity, the errors that pass."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
HTTP_FORBIDDEN, HTTP_NOT_FOUND, HTTP_CONFLICT, HTTP_GONE = 403, 404, 409, 410
API_FAILURES = (ApiException, urllib3.exceptions.HTTPError, OSError)
"""What a call to the API server raises when it is refused or cannot be made."""
REQUEST_TIMEOUT_S = 30
"""How long one call to the API server may take before it counts as failed."""


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


def describe_failure(error: BaseException) -> str:
    """One line for a failed API call: status, reason and the server's own message, no headers.

    ``str()`` of an ``ApiException`` spans several lines with every response header; an API
    server's Status message already names the object, the verb and the missing right, e.g.
    ``403 Forbidden: configmaps "pl-podlatency-model" is forbidden: User "system:serviceaccount:
    default:pl-podlatency-trainer" cannot create resource "configmaps" ...``.
    """
    if isinstance(error, ApiException):
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = str(json.loads(error.body or "").get("message") or "")
        reason = str(error.reason or "").strip()
        line = " ".join(part for part in (str(error.status or ""), reason) if part)
        return f"{line}: {message}" if message and message not in reason else line or "API error"
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
