"""The server span of a request, and the two phases only the HTTP layer can see: ``dispatch`` and ``respond``.

:class:`ServerSpanMiddleware` opens one server span per request, continuing the caller's trace when
the request carries W3C ``traceparent``/``tracestate`` headers, and notes the moment of arrival.
``dispatch`` runs from that moment to the sync handler starting on its worker thread: reading the
body, and the executor hop every sync handler pays. ``respond`` runs from the handler finishing to the
last byte of the response being handed to the server: the hop back to the event loop and sending.
Neither can be timed from inside the handler, so the middleware notes the moments and the spans are
recorded with explicit timestamps.

It replaces OpenTelemetry's generic ASGI instrumentation (what Litestar's OpenTelemetry plugin wraps),
which cost about 65 microseconds of event-loop time per request even when nothing is sampled, a
tenth of a 7-pod prediction's server time (README, Performance). This one asks the sampler first and
builds attributes only for spans that are recorded.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from podlatency.dataplane import PredictionService
from podlatency.tracing import PhaseRecorder

ARRIVED_KEY = "podlatency.arrived_ns"
HANDLER_DONE_KEY = "podlatency.handler_done_ns"
RECORDER_KEY = "podlatency.phases"

UNTRACED_PATHS = re.compile(r"^/healthz$|^/readyz$|^/metrics$|^/schema")
"""Probes, scrapes and the schema: no spans."""


def untraced(scope: Scope) -> bool:
    """Whether ``scope`` is a request that gets no span."""
    return UNTRACED_PATHS.match(scope["path"]) is not None


ASGIHeaders = Iterable[tuple[bytes, bytes]]


class _HeaderGetter(Getter[ASGIHeaders]):
    """Reads trace-context headers from an ASGI header list (names arrive lower-cased)."""

    def get(self, carrier: ASGIHeaders, key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for name, value in carrier if name == wanted]
        return values or None

    def keys(self, carrier: ASGIHeaders) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


_HEADER_GETTER = _HeaderGetter()


@functools.cache
def _propagated_header_names(propagator: TextMapPropagator) -> frozenset[bytes]:
    # Composite propagators build their field set anew on every access.
    return frozenset(name.lower().encode("latin-1") for name in propagator.fields)


def caller_context(headers: ASGIHeaders) -> context.Context | None:
    """The caller's trace context from the request headers, or ``None`` when it sent none."""
    names = _propagated_header_names(propagate.get_global_textmap())
    if not any(name in names for name, _ in headers):
        return None
    return propagate.extract(headers, getter=_HEADER_GETTER)


def request_attributes(scope: HTTPScope, route: str) -> dict[str, AttributeValue]:
    """The HTTP semantic-convention attributes of a recorded server span."""
    attributes: dict[str, AttributeValue] = {
        "http.request.method": scope["method"],
        "http.route": route,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if client := scope.get("client"):
        attributes["client.address"] = client[0]
    if server := scope.get("server"):
        attributes["server.address"] = server[0]
        if server[1] is not None:
            attributes["server.port"] = server[1]
    for name, value in scope["headers"]:
        if name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
    return attributes


class ServerSpanMiddleware(ASGIMiddleware):
    """One server span per request; notes when it arrived and records ``respond`` once it is answered.

    The span is current while the request is handled (sync handlers see it on their worker thread:
    the executor copies the context), so phase spans become its children. Responses of 500 and
    above mark it as an error; 4xx are the client's and do not.
    """

    scopes = (ScopeType.HTTP,)
    should_bypass_for_scope = staticmethod(untraced)

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Run the request inside its server span, and watch ``send`` for the status and the end."""
        arrived_ns = time.time_ns()
        scope = cast("HTTPScope", scope)  # only HTTP scopes reach this middleware
        state: dict[str, Any] = scope.setdefault("state", {})
        state[ARRIVED_KEY] = arrived_ns
        route = scope.get("path_template") or scope["path"]
        parent = caller_context(scope["headers"])
        span = self._tracer.start_span(
            f"{scope['method']} {route}", context=parent, kind=SpanKind.SERVER, start_time=arrived_ns
        )
        recording = span.is_recording()
        if recording:
            span.set_attributes(request_attributes(scope, route))

        answered = False

        async def send_and_observe(message: Message) -> None:
            nonlocal answered
            if recording and message["type"] == "http.response.start":
                status: int = message["status"]
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_attribute("error.type", str(status))
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered_ns = time.time_ns()
                answered = True
                span.end(end_time=answered_ns)  # the span covers the request up to its answer
                recorder: PhaseRecorder | None = state.get(RECORDER_KEY)
                handler_done_ns: int | None = state.get(HANDLER_DONE_KEY)
                if recorder is not None and handler_done_ns is not None:
                    recorder.record("respond", handler_done_ns, answered_ns)
                    recorder.submit()

        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            await next_app(scope, receive, send_and_observe)
        except BaseException as error:
            if recording:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            raise
        finally:
            # Error responses may be sent past our wrapper: their phases still become spans.
            leftover: PhaseRecorder | None = state.get(RECORDER_KEY)
            if leftover is not None:
                leftover.submit()
            context.detach(token)
            if not answered:
                span.end()


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
