"""Liveness and readiness for Kubernetes probes (not traced)."""

from __future__ import annotations

from litestar import get
from litestar.datastructures import State

from podlatency.web.routes_v1 import service_of


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@get("/readyz", sync_to_thread=False)
def readyz(state: State) -> dict[str, str]:
    """200 once a model is in service; 503 (with the reason) until then."""
    model = service_of(state).holder.current()
    return {"status": "ready", "model_version": model.version}
