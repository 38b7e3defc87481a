"""The two phases only the HTTP layer can see: ``dispatch`` and ``respond``.

``dispatch`` runs from the request's arrival (the start of the server span) to the sync handler starting
on its worker thread: routing, reading the body, and the executor hop every sync handler pays.
``respond`` runs from the handler finishing to the last byte of the response being handed to the
server: the hop back to the event loop and sending. Neither can be timed from inside the handler, so
the middleware notes the moments and the spans are recorded with explicit timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace

from podlatency.dataplane import PredictionService
from podlatency.tracing import PhaseRecorder

ARRIVED_KEY = "podlatency.arrived_ns"
HANDLER_DONE_KEY = "podlatency.handler_done_ns"
RECORDER_KEY = "podlatency.phases"


def _arrival_ns() -> int:
    """The server span's start when a recording span is current, else now."""
    start_time = getattr(trace.get_current_span(), "start_time", None)
    return start_time if isinstance(start_time, int) else time.time_ns()


class PhaseTimingMiddleware(ASGIMiddleware):
    """Notes when a request arrived and records ``respond`` once the response is sent."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Wrap ``send`` so the end of the response is seen."""
        state: dict[str, Any] = scope.setdefault("state", {})
        state[ARRIVED_KEY] = _arrival_ns()

        async def send_and_time(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                recorder: PhaseRecorder | None = state.get(RECORDER_KEY)
                handler_done_ns: int | None = state.get(HANDLER_DONE_KEY)
                if recorder is not None and handler_done_ns is not None:
                    recorder.record("respond", handler_done_ns, time.time_ns())
                    recorder.submit()

        try:
            await next_app(scope, receive, send_and_time)
        finally:
            # Error responses may be sent past our wrapper: their phases still become spans.
            leftover: PhaseRecorder | None = state.get(RECORDER_KEY)
            if leftover is not None:
                leftover.submit()


@contextmanager
def request_phases(scope: Scope, service: PredictionService) -> Iterator[PhaseRecorder]:
    """Inside a sync handler: record ``dispatch`` now, and note when the handler is done."""
    now_ns = time.time_ns()
    state: dict[str, Any] = scope.get("state", {})
    recorder = service.phase_recorder(scope["path"])
    recorder.record("dispatch", state.get(ARRIVED_KEY, now_ns), now_ns)
    state[RECORDER_KEY] = recorder
    try:
        yield recorder
    finally:
        state[HANDLER_DONE_KEY] = time.time_ns()


def elapsed_ms(scope: Scope) -> float:
    """Milliseconds since the request arrived."""
    state: dict[str, Any] = scope.get("state", {})
    arrived_ns: int = state.get(ARRIVED_KEY, time.time_ns())
    return round((time.time_ns() - arrived_ns) / 1e6, 3)
