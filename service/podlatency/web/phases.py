"""The HTTP edge of a request: server span, request metrics, and the phases ``dispatch`` and ``respond``.

:class:`EdgeMiddleware` opens one server span per request, continuing the caller's trace when
the request carries W3C ``traceparent``/``tracestate`` headers, and notes the moment of arrival.
``dispatch`` runs from that moment until the handler starts on the rows: reading the body, and for a
handler on a worker thread the executor hop. ``respond`` runs from the answer being encoded to the
last byte of the response being handed to the server: the hop back to the event loop and sending.
Neither can be timed from inside the handler's own work, so the moments are noted here and the
spans recorded with explicit timestamps. Once a request is answered, it is decided here whether its
trace is kept (:mod:`podlatency.keeping`: head-sampled, slow or failed); a kept request the head
sampler passed over gets its spans made afterwards.

It replaces OpenTelemetry's generic ASGI instrumentation (what Litestar's OpenTelemetry plugin wraps),
which costs event-loop time on every request even when nothing is sampled. This one asks the sampler
first and builds attributes only for spans that are recorded.
"""

from __future__ import annotations

import functools
import random
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
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from podlatency.dataplane import PredictionService
from podlatency.errors import Overloaded
from podlatency.keeping import ERROR, KEPT_ATTRIBUTE, SAMPLED
from podlatency.metrics import route_metrics, service_metrics
from podlatency.spans import PhaseRecorder
from podlatency.tracing import Tracing
from podlatency.web.errors import send_error

ARRIVED_KEY = "podlatency.arrived_ns"
HANDLER_DONE_KEY = "podlatency.handler_done_ns"
RECORDER_KEY = "podlatency.phases"
EDGE_KEY = "podlatency.edge"

UNTRACED_PATHS = re.compile(r"^/healthz$|^/readyz$|^/metrics$|^/schema")
"""Probes, scrapes and the schema: no spans."""

PREDICTION_PATHS = ("/v1/predict", "/predict")
"""What the in-flight limit counts (and sheds); extensions add theirs."""


def untraced(scope: Scope) -> bool:
    """Whether ``scope`` is a request that gets no span."""
    return UNTRACED_PATHS.match(scope["path"]) is not None


def unobserved(scope: Scope) -> bool:
    """Prometheus scrapes: neither a span nor request metrics."""
    return scope["path"] == "/metrics"


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


class EdgeMiddleware(ASGIMiddleware):
    """What every HTTP request goes through once: its server span, its request metrics, load shedding.

    - The span is current while the request is handled (sync handlers see it on their worker thread:
      the executor copies the context), so phase spans become its children. Responses of 500 and
      above mark it as an error; 4xx are the client's and do not. Probes, scrapes and the schema get
      no span.
    - ``podlatency_requests_total``, ``podlatency_request_duration_seconds``,
      ``podlatency_requests_in_progress`` and ``podlatency_requests_error_total`` by method, route
      template and status (``/metrics`` itself is not counted).
    - Prediction requests beyond ``max_in_flight`` in progress are answered 503 with ``Retry-After``
      at once (:class:`~podlatency.errors.Overloaded`): a queue without bound only turns overload
      into latency for everyone, while a router that gets a fast 503 can fall back to its default
      scoring. Counted on the event loop, so no lock is needed.

    One middleware rather than three (Litestar's Prometheus middleware, a span middleware and a
    limiter): each layer costs event-loop time on every request, and the event loop is what a
    batching server runs out of first (docs/performance.md).
    """

    scopes = (ScopeType.HTTP,)
    should_bypass_for_scope = staticmethod(unobserved)

    def __init__(
        self, tracing: Tracing, max_in_flight: int = 0, prediction_paths: tuple[str, ...] = PREDICTION_PATHS
    ) -> None:
        self._tracing = tracing
        self.max_in_flight = max_in_flight
        self._prediction_paths = prediction_paths
        self.in_flight = 0

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Count the request, shed it or run it inside its server span, and watch ``send``."""
        arrived_ns = time.time_ns()
        scope = cast("HTTPScope", scope)  # only HTTP scopes reach this middleware
        state: dict[str, Any] = scope.setdefault("state", {})
        state[ARRIVED_KEY] = arrived_ns
        route = scope.get("path_template") or scope["path"]
        counted = route_metrics(scope["method"], route)
        counted.in_progress.inc()
        status = 500  # until a response starts
        kept_trace_id: str | None = None  # the request-duration exemplar
        try:
            if scope["path"].startswith(self._prediction_paths):
                if self.max_in_flight and self.in_flight >= self.max_in_flight:
                    status = Overloaded.status_code
                    await self._shed(send)
                    kept_trace_id = self._keep_shed(scope, route, arrived_ns)
                    return
                state[EDGE_KEY] = self  # the handler asks whether its request is alone (``alone``)
                self.in_flight += 1
                in_flight_gauge = service_metrics().requests_in_flight
                in_flight_gauge.inc()
                try:
                    status, kept_trace_id = await self._traced(
                        scope, receive, send, next_app, route=route, arrived_ns=arrived_ns
                    )
                finally:
                    self.in_flight -= 1
                    in_flight_gauge.dec()
            elif untraced(scope):
                status = await _run_noting_status(scope, receive, send, next_app)
            else:
                status, kept_trace_id = await self._traced(
                    scope, receive, send, next_app, route=route, arrived_ns=arrived_ns
                )
        finally:
            counted.in_progress.dec()
            counted.answered(status, (time.time_ns() - arrived_ns) / 1e9, kept_trace_id)

    async def _shed(self, send: Send) -> None:
        service_metrics().requests_shed.inc()
        # Sent from here, past the exception machinery: shedding must cost far less than serving.
        detail = f"{self.in_flight} prediction requests in progress (PODLATENCY_MAX_IN_FLIGHT)"
        await send_error(send, Overloaded(detail))

    def _keep_shed(self, scope: HTTPScope, route: str, arrived_ns: int) -> str | None:
        """Keep a shed request's trace (a root span, made on the writer's thread); its trace id."""
        tracing = self._tracing
        if tracing.kept is None:
            return None
        parent = caller_context(scope["headers"])
        caller = trace.get_current_span(parent).get_span_context() if parent is not None else None
        trace_id = caller.trace_id if caller is not None and caller.is_valid else random.getrandbits(128)
        attributes = kept_attributes(scope, route, Overloaded.status_code, ERROR)
        name, times_ns = server_span_name(scope, route), (arrived_ns, time.time_ns())
        tracing.writer.submit(tracing.kept_root(name, trace_id, parent, times_ns, attributes))
        return format(trace_id, "032x")

    async def _traced(
        self,
        scope: HTTPScope,
        receive: Receive,
        send: Send,
        next_app: ASGIApp,
        *,
        route: str,
        arrived_ns: int,
    ) -> tuple[int, str | None]:
        """Run the request in its server span; the status, and the trace id when its trace is kept."""
        served = _ServedRequest(self._tracing, scope, route, arrived_ns)

        async def send_and_observe(message: Message) -> None:
            served.starting(message)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                served.answered(time.time_ns())

        token = context.attach(trace.set_span_in_context(served.span, served.parent))
        try:
            await next_app(scope, receive, send_and_observe)
        except BaseException as error:
            served.raised(error)
            raise
        finally:
            context.detach(token)
            if not served.finished:  # it raised past the server's error handling
                served.answered(time.time_ns())
        return served.status, served.kept_trace_id


def server_span_name(scope: HTTPScope, route: str) -> str:
    """A server span's name: method and route template (``POST /v1/predict``), a bounded set."""
    return f"{scope['method']} {route}"


def kept_attributes(scope: HTTPScope, route: str, status: int, reason: str) -> dict[str, AttributeValue]:
    """The attributes of a server span made once the request was answered."""
    attributes = request_attributes(scope, route)
    attributes["http.response.status_code"] = status
    attributes[KEPT_ATTRIBUTE] = reason
    if status >= 500:
        attributes["error.type"] = str(status)
    return attributes


class _ServedRequest:
    """One traced request: its server span, its status, and whether its trace is kept once answered.

    The span ends when the answer has been sent. Then the trace is kept or not (sampled, slow,
    failed: :mod:`podlatency.keeping`); a request the head sampler passed over that is kept gets its
    server span made afterwards, with its phases under it.
    """

    def __init__(self, tracing: Tracing, scope: HTTPScope, route: str, arrived_ns: int) -> None:
        self._tracing = tracing
        self._scope = scope
        self._route = route
        self._arrived_ns = arrived_ns
        self.parent = caller_context(scope["headers"])
        self.name = server_span_name(scope, route)
        self.span = tracing.head.start_span(
            self.name, context=self.parent, kind=SpanKind.SERVER, start_time=arrived_ns
        )
        self._recording = self.span.is_recording()
        if self._recording:
            self.span.set_attributes(request_attributes(scope, route))
        self.status = 500  # until a response starts
        self.finished = False
        self.kept_trace_id: str | None = None

    def starting(self, message: Message) -> None:
        """Note the status when the response starts."""
        if message["type"] != "http.response.start":
            return
        self.status = message["status"]
        if self._recording:
            self.span.set_attribute("http.response.status_code", self.status)
            if self.status >= 500:
                self.span.set_attribute("error.type", str(self.status))
                self.span.set_status(Status(StatusCode.ERROR))

    def raised(self, error: BaseException) -> None:
        """The request raised instead of answering: a server error."""
        self.status = 500
        if self._recording:
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def answered(self, answered_ns: int) -> None:
        """Record ``respond``, decide whether the trace is kept, end the span, submit the phases."""
        self.finished = True
        state: dict[str, Any] = self._scope["state"]
        recorder: PhaseRecorder | None = state.get(RECORDER_KEY)
        handler_done_ns: int | None = state.get(HANDLER_DONE_KEY)
        if recorder is not None and handler_done_ns is not None:
            recorder.record("respond", handler_done_ns, answered_ns)
        seconds = (answered_ns - self._arrived_ns) / 1e9
        reason = self._tracing.kept_reason(self._route, self._recording, self.status, seconds)
        if self._recording:
            self.span.set_attribute(KEPT_ATTRIBUTE, reason or SAMPLED)
            self.span.end(end_time=answered_ns)  # the span covers the request up to its answer
        elif reason is not None:
            attributes = kept_attributes(self._scope, self._route, self.status, reason)
            trace_id = self.span.get_span_context().trace_id
            times_ns = (self._arrived_ns, answered_ns)
            root = self._tracing.kept_root(self.name, trace_id, self.parent, times_ns, attributes)
            if recorder is None:
                self._tracing.writer.submit(root)
            else:
                recorder.keep(root)
        if reason is not None:
            self.kept_trace_id = format(self.span.get_span_context().trace_id, "032x")
        if recorder is not None:
            recorder.submit()


async def _run_noting_status(scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> int:
    """Run an untraced request; its response status."""
    status = 500

    async def send_noting_status(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    await next_app(scope, receive, send_noting_status)
    return status


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
