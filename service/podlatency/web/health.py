"""Liveness and readiness for Kubernetes probes (not traced)."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from podlatency.dataplane import PredictionService


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@get("/readyz", sync_to_thread=False)
def readyz(service: NamedDependency[PredictionService]) -> dict[str, str]:
    """200 once a model is in service; 503 (with the reason) until then."""
    model = service.holder.current()
    return {"status": "ready", "model_version": model.version}
