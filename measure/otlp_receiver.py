"""A minimal OTLP/HTTP trace receiver on loopback: what the tests and ``make bench`` send spans to.

It decodes each ``ExportTraceServiceRequest`` protobuf as a collector would, counts server spans by
``podlatency.trace.kept``, and keeps the spans themselves unless told not to (a benchmark at full
tracing rate would hold hundreds of thousands).
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

KEPT_ATTRIBUTE = "podlatency.trace.kept"


def attribute(span: Span, key: str) -> Any:
    """A span attribute's value (string, int, float or bool), or ``None``."""
    for item in span.attributes:
        if item.key == key:
            value = item.value
            return getattr(value, value.WhichOneof("value") or "string_value")
    return None


class OtlpReceiver:
    """Receives OTLP/HTTP traces on ``127.0.0.1`` (an ephemeral port): spans, and kept roots by reason."""

    def __init__(self, *, keep_spans: bool = True) -> None:
        self.spans: list[Span] = []
        self.span_count = 0
        self.kept: Counter[tuple[str, str]] = Counter()
        self.service_names: set[str] = set()
        self.content_types: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(payload)
                receiver._take(request, self.headers.get("content-type", ""))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._keep_spans = keep_spans
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _take(self, request: ExportTraceServiceRequest, content_type: str) -> None:
        with self._lock:
            self.content_types.add(content_type)
            for resource_spans in request.resource_spans:
                for item in resource_spans.resource.attributes:
                    if item.key == "service.name":
                        self.service_names.add(item.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.span_count += 1
                        if span.kind == Span.SPAN_KIND_SERVER:
                            self.kept[span.name, str(attribute(span, KEPT_ATTRIBUTE))] += 1
                    if self._keep_spans:
                        self.spans.extend(scope_spans.spans)

    @property
    def endpoint(self) -> str:
        """The base URL to set as ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def snapshot(self) -> list[Span]:
        """The spans received so far."""
        with self._lock:
            return list(self.spans)

    def kept_counts(self, name: str) -> dict[str, int]:
        """Server spans named ``name`` (e.g. ``POST /v1/predict``) received so far, by kept reason."""
        with self._lock:
            return {reason: count for (span_name, reason), count in self.kept.items() if span_name == name}

    def close(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self.server.server_close()
