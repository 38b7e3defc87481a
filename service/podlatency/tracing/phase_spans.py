"""A request's spans: its phases, noted on the request path and made into spans in the background.

:class:`PhaseRecorder` notes each phase of a request in about a microsecond; :class:`SpanWriter`'s
thread makes the spans (with explicit timestamps) and the phase histograms' samples afterwards. A
request the head sampler passed over but that is kept once answered
(:mod:`podlatency.tracing.tail_sampling`) gets its server span made afterwards too, as a
:class:`KeptRoot`, with its phases under it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from podlatency.metrics import phase_histogram
from podlatency.tracing.bounded_export import WRITER_FULL, span_drops

logger = logging.getLogger(__name__)


class ChosenTraceIds(IdGenerator):
    """Random ids, except a trace id chosen beforehand for the next root span made on this thread.

    A kept request's root span is made after the request, but its trace id was fixed when it arrived
    (it is in the request-duration histogram's exemplar): the writer chooses it just before.
    """

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._chosen = threading.local()

    def choose(self, trace_id: int) -> None:
        """Use ``trace_id`` for the next root span this thread makes."""
        self._chosen.trace_id = trace_id

    def generate_span_id(self) -> int:
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        chosen: int | None = getattr(self._chosen, "trace_id", None)
        if chosen is None:
            return self._random.generate_trace_id()
        self._chosen.trace_id = None
        return chosen


@dataclass(slots=True)
class KeptRoot:
    """The server span of a request the head sampler passed over, kept once it was answered."""

    tracer: Tracer
    """The kept tracer: it records every span it is asked for."""
    ids: ChosenTraceIds
    name: str
    trace_id: int
    parent: Context | None
    """The caller's trace context, when the request carried one."""
    start_ns: int
    end_ns: int
    attributes: dict[str, AttributeValue]
    error: bool

    def emit(self) -> Context:
        """Make the span (on the writer's thread); the context its phases go under."""
        if self.parent is None:
            self.ids.choose(self.trace_id)
        span = self.tracer.start_span(
            self.name,
            context=self.parent,
            kind=SpanKind.SERVER,
            start_time=self.start_ns,
            attributes=self.attributes,
        )
        if self.error:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=self.end_ns)
        return trace.set_span_in_context(span)

    def span_count(self) -> int:
        return 1


class Emittable(Protocol):
    """What the span writer's thread makes spans of."""

    def emit(self) -> object: ...

    def span_count(self) -> int:
        """How many spans :meth:`emit` makes."""
        ...


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
        self._kept: KeptRoot | None = None
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

    def span_count(self) -> int:
        """The spans :meth:`emit` makes: a phase's each, and a kept request's root."""
        return len(self._phases) + (self._kept is not None)

    def keep(self, root: KeptRoot) -> None:
        """Keep this unsampled request's trace after all: its phases go under ``root``."""
        self._kept = root

    def submit(self) -> None:
        """Hand the noted phases to the writer (once; later calls do nothing).

        A request whose trace is not kept only feeds histograms: that is cheaper inline than a
        hand-off to the writer thread.
        """
        if self._submitted:
            return
        self._submitted = True
        if self._traced or self._kept is not None:
            self._writer.submit(self)
        else:
            self.emit()

    def emit(self) -> None:
        """Make the spans (on the writer's thread) and metric samples."""
        tracer, parent, traced = self._tracer, self._parent, self._traced
        if self._kept is not None:
            tracer, parent, traced = self._kept.tracer, self._kept.emit(), True
        for name, start_ns, end_ns, error, attributes in self._phases:
            phase_histogram(self.route, name).observe((end_ns - start_ns) / 1e9)
            if not traced:
                continue
            span = tracer.start_span(
                name,
                context=parent,
                start_time=start_ns,
                attributes={**self.attributes, **attributes} if attributes else self.attributes,
            )
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end(end_time=end_ns)


class SpanWriter:
    """One background thread that turns submitted recorders (and kept roots) into spans and metric samples.

    Its queue is bounded: past ``max_pending`` requests it drops rather than grow without limit
    when the process is saturated, and counts the spans it did not make in
    ``podlatency_spans_dropped_total{reason="writer_full"}`` (logged at most once a minute).
    """

    def __init__(self, max_pending: int = 10_000) -> None:
        self._queue: queue.SimpleQueue[Emittable | threading.Event | None] = queue.SimpleQueue()
        self._max_pending = max_pending
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, spans: Emittable) -> None:
        """Queue a finished request's phases (or a kept request's root span)."""
        if self._queue.qsize() >= self._max_pending:
            span_drops().drop(WRITER_FULL, spans.span_count())
            return
        self._ensure_started()
        self._queue.put(spans)

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
