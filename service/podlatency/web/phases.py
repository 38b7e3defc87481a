"""A request's phases as its handler sees them: ``dispatch`` at the start, the recorder, the time taken.

The edge (:mod:`podlatency.web.edge`) notes when a request arrived and, once it is answered, records
``respond`` from the moment :func:`request_phases` noted the handler was done; these helpers share
those moments with it through the ASGI scope's state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from litestar.types import Scope

from podlatency.prediction_service import PredictionService
from podlatency.tracing.phase_spans import PhaseRecorder

if TYPE_CHECKING:
    from podlatency.web.edge import EdgeMiddleware

ARRIVED_KEY = "podlatency.arrived_ns"
HANDLER_DONE_KEY = "podlatency.handler_done_ns"
RECORDER_KEY = "podlatency.phases"
EDGE_KEY = "podlatency.edge"


def alone(scope: Scope) -> bool:
    """Whether this is the only prediction request in progress in the process (counted on the loop)."""
    edge: EdgeMiddleware | None = scope.get("state", {}).get(EDGE_KEY)
    return edge is not None and edge.in_flight <= 1


def arrival_ns(scope: Scope) -> int:
    """When the request arrived (now, for a request that did not pass the edge middleware)."""
    state: dict[str, Any] = scope.get("state", {})
    arrived: int = state.get(ARRIVED_KEY) or time.time_ns()
    return arrived


def new_recorder(scope: Scope, service: PredictionService) -> PhaseRecorder:
    """The request's phase recorder, where the edge middleware finds it to record ``respond``."""
    recorder = service.phase_recorder(scope["path"])
    scope.setdefault("state", {})[RECORDER_KEY] = recorder
    return recorder


@contextmanager
def request_phases(scope: Scope, service: PredictionService) -> Iterator[PhaseRecorder]:
    """Inside a sync handler: record ``dispatch`` now, and note when the handler is done."""
    now_ns = time.time_ns()
    recorder = new_recorder(scope, service)
    recorder.record("dispatch", arrival_ns(scope), now_ns)
    try:
        yield recorder
    finally:
        scope["state"][HANDLER_DONE_KEY] = time.time_ns()


def elapsed_ms(scope: Scope) -> float:
    """Milliseconds since the request arrived."""
    state: dict[str, Any] = scope.get("state", {})
    arrived_ns: int = state.get(ARRIVED_KEY, time.time_ns())
    return round((time.time_ns() - arrived_ns) / 1e6, 3)
