"""One traced request at the edge: its server span, and whether its trace is kept once it is answered.

The span starts when the request arrives and ends when its answer has been sent. Then the trace is
kept or not (:mod:`podlatency.tracing.tail_sampling`: head-sampled, slow or failed). A request the
head sampler passed over that is kept gets its server span made afterwards, with explicit times and
its phases under it, on the span writer's thread.
"""

from __future__ import annotations

from typing import Any

from litestar.types import HTTPScope, Message
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from podlatency.tracing.otel import Tracing
from podlatency.tracing.phase_spans import PhaseRecorder
from podlatency.tracing.tail_sampling import KEPT_ATTRIBUTE, SAMPLED
from podlatency.web.phases import HANDLER_DONE_KEY, RECORDER_KEY
from podlatency.web.propagation import caller_context


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


class ServedRequest:
    """One traced request: its server span, its status, and whether its trace is kept once answered.

    See the module: the span ends when the answer has been sent, and then the trace is kept or not.
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
