"""OpenTelemetry set-up and the per-phase spans of a request.

Configuration follows the standard ``OTEL_*`` variables: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) turns on the OTLP/HTTP exporter behind a BatchSpanProcessor;
``OTEL_SERVICE_NAME`` names the service (default ``podlatency``); ``OTEL_TRACES_SAMPLER`` and its
argument choose how many requests are traced. With no endpoint, no span is recorded at all (unless a
sampler is set explicitly). Tests pass their own tracer provider instead.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from podlatency.metrics import phase_histogram, service_metrics

logger = logging.getLogger(__name__)

TRACER_NAME = "podlatency"
DEFAULT_SERVICE_NAME = "podlatency"


def otlp_endpoint_configured(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for an OTLP trace exporter."""
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def build_tracer_provider(environ: Mapping[str, str] | None = None) -> TracerProvider:
    """A tracer provider for this process, exporting over OTLP/HTTP when an endpoint is set."""
    env = os.environ if environ is None else environ
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
    exporting = otlp_endpoint_configured(env)
    # Spans that go nowhere still cost CPU (docs/performance.md): with no exporter and no sampler
    # chosen, record none. OTEL_TRACES_SAMPLER set explicitly still wins.
    sampler = None if exporting or env.get("OTEL_TRACES_SAMPLER") else ALWAYS_OFF
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    if exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class PhaseRecorder:
    """Times the phases of one request: each becomes a child span, a histogram sample and a duration.

    A phase is noted as (name, start, end) on the request path, which costs about a microsecond;
    the spans (with explicit timestamps, under the span that was current when the recorder was made)
    and the metric samples are made later by a :class:`SpanWriter` thread. Creating them inline cost
    ~30 microseconds per phase, a quarter of a 7-pod request.
    """

    def __init__(
        self,
        tracer: Tracer,
        writer: SpanWriter,
        route: str,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> None:
        self._tracer = tracer
        self._writer = writer
        self.route = route
        parent_span = trace.get_current_span()
        self._parent: Context = trace.set_span_in_context(parent_span)
        # An unsampled request gets no phase spans (they would be dropped), only metric samples.
        self._traced = parent_span.get_span_context().trace_flags.sampled
        self._phases: list[
            tuple[str, int, int, BaseException | None, Mapping[str, AttributeValue] | None]
        ] = []
        self._submitted = False
        self.attributes: dict[str, AttributeValue] = dict(attributes or {})
        self.durations_ns: dict[str, int] = {}

    def record(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        error: BaseException | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        """Note a phase that ran from ``start_ns`` to ``end_ns`` (``time.time_ns`` clock).

        A name recorded several times (one phase per pod) adds up in :attr:`durations_ns`.
        """
        self.durations_ns[name] = self.durations_ns.get(name, 0) + end_ns - start_ns
        self._phases.append((name, start_ns, end_ns, error, attributes))

    @contextmanager
    def phase(self, name: str, started_ns: int | None = None) -> Iterator[None]:
        """Time the enclosed block as phase ``name`` (from ``started_ns`` when given: the end of the last)."""
        start_ns = started_ns or time.time_ns()
        try:
            yield
        except BaseException as error:
            self.record(name, start_ns, time.time_ns(), error)
            raise
        self.record(name, start_ns, time.time_ns())

    def milliseconds(self) -> dict[str, float]:
        """Durations so far, in milliseconds rounded to the microsecond."""
        return {name: round(duration / 1e6, 3) for name, duration in self.durations_ns.items()}

    def submit(self) -> None:
        """Hand the noted phases to the writer (once; later calls do nothing).

        An unsampled request only feeds histograms: that is cheaper inline than a hand-off to the
        writer thread.
        """
        if self._submitted:
            return
        self._submitted = True
        if self._traced:
            self._writer.submit(self)
        else:
            self.emit()

    def emit(self) -> None:
        """Make the spans (on the writer's thread) and metric samples."""
        for name, start_ns, end_ns, error, attributes in self._phases:
            phase_histogram(self.route, name).observe((end_ns - start_ns) / 1e9)
            if not self._traced:
                continue
            span = self._tracer.start_span(
                name,
                context=self._parent,
                start_time=start_ns,
                attributes={**self.attributes, **attributes} if attributes else self.attributes,
            )
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end(end_time=end_ns)


DROP_LOG_INTERVAL_S = 60.0


class SpanWriter:
    """One background thread that turns submitted recorders into spans and metric samples.

    Its queue is bounded: past ``max_pending`` recorders it drops rather than grow without limit
    when the process is saturated (or the exporter stalls), counts what it dropped in
    ``podlatency_spans_dropped_total`` and says so in the log at most once a minute.
    """

    def __init__(self, max_pending: int = 10_000) -> None:
        self._queue: queue.SimpleQueue[PhaseRecorder | threading.Event | None] = queue.SimpleQueue()
        self._max_pending = max_pending
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.dropped = 0
        self._dropped_logged = 0
        self._drop_logged_at = -DROP_LOG_INTERVAL_S

    def submit(self, recorder: PhaseRecorder) -> None:
        """Queue a finished request's phases."""
        if self._queue.qsize() >= self._max_pending:
            self._drop()
            return
        self._ensure_started()
        self._queue.put(recorder)

    def _drop(self) -> None:
        self.dropped += 1
        service_metrics().spans_dropped.inc()
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_INTERVAL_S:
            logger.warning(
                "span writer queue full (%d requests pending): %d requests' spans dropped since the "
                "last report (podlatency_spans_dropped_total)",
                self._max_pending,
                self.dropped - self._dropped_logged,
            )
            self._drop_logged_at, self._dropped_logged = now, self.dropped

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far has been emitted."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Emit what is queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="podlatency-span-writer", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                item.emit()
            except Exception:  # a broken exporter must not stop tracing for good
                logger.exception("could not record phase spans")
