"""The HTTP edge of a request: server span, request metrics, load shedding, and ``dispatch``/``respond``.

:class:`EdgeMiddleware` opens one server span per request (:mod:`podlatency.web.served`), continuing
the caller's trace when the request carries W3C ``traceparent``/``tracestate`` headers
(:mod:`podlatency.web.propagation`), and notes the moment of arrival. ``dispatch`` runs from that
moment until the handler starts on the rows: reading the body, and for a handler on a worker thread
the executor hop. ``respond`` runs from the answer being encoded to the last byte of the response
being handed to the server: the hop back to the event loop and sending. Neither can be timed from
inside the handler's own work, so the moments are noted here and the spans recorded with explicit
timestamps (the handler's side is :mod:`podlatency.web.phases`).

It replaces OpenTelemetry's generic ASGI instrumentation (what Litestar's OpenTelemetry plugin wraps),
which costs event-loop time on every request even when nothing is sampled. This one asks the sampler
first and builds attributes only for spans that are recorded.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any, cast

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry import context, trace

from podlatency.errors import Overloaded
from podlatency.metrics import route_metrics, service_metrics
from podlatency.tracing.otel import Tracing
from podlatency.tracing.tail_sampling import ERROR
from podlatency.web.errors import send_error
from podlatency.web.phases import ARRIVED_KEY, EDGE_KEY
from podlatency.web.propagation import caller_context
from podlatency.web.served import ServedRequest, kept_attributes, server_span_name

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
        served = ServedRequest(self._tracing, scope, route, arrived_ns)

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
