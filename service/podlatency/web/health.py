"""Liveness and readiness for Kubernetes probes, and the Prometheus scrape (none of them traced)."""

from __future__ import annotations

import os
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder

from podlatency.prediction_service import PredictionService
from podlatency.web.openapi import error_responses


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@get("/readyz", sync_to_thread=False, responses=error_responses(503))
def readyz(service: NamedDependency[PredictionService]) -> dict[str, str]:
    """200 once a model is in service; 503 (with the reason) until then."""
    model = service.holder.current()
    return {"status": "ready", "model_version": model.version}


@get("/metrics", sync_to_thread=False)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Every metric, in the format the scraper asks for in ``Accept``.

    Scraped as OpenMetrics (``Accept: application/openmetrics-text``), the request-duration histogram
    carries exemplars: the trace ids of kept requests. Otherwise the Prometheus text format. With
    several workers (``PROMETHEUS_MULTIPROC_DIR``) the workers' files are summed, without exemplars.
    """
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    if content_type.startswith("text/"):
        # Litestar adds the charset to a text/ type itself: prometheus_client's would appear twice.
        content_type = content_type.replace("; charset=utf-8", "")
    return Response(encode(registry), media_type=content_type)
