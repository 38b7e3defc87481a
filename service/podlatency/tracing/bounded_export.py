"""Getting spans out with bounded memory: a batch span processor that never overflows, and drop counts.

OpenTelemetry's :class:`BatchSpanProcessor` keeps at most ``OTEL_BSP_MAX_QUEUE_SIZE`` spans, but
past that it logs a line for every span it drops. With the collector down and requests traced at
full rate that is thousands of lines a second. :class:`BoundedExport` sits in front of it:

- it knows how many spans wait in the batch queue (those it passed on, less those the exporter was
  handed), and drops a span itself, counted, rather than let the queue overflow;
- while the collector fails (the last export did not succeed), it passes on one span every
  :data:`PROBE_INTERVAL_S` seconds and drops the rest, counted: the exporter's retries are not fed
  spans that will be lost anyway, and the probe finds out when the collector is back.

Every drop is counted in ``podlatency_spans_dropped_total{reason}`` and logged at most once a minute.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from podlatency.metrics import service_metrics

logger = logging.getLogger(__name__)

DROP_LOG_INTERVAL_S = 60.0
PROBE_INTERVAL_S = 5.0
DEFAULT_MAX_QUEUE = 2048  # OpenTelemetry's default for OTEL_BSP_MAX_QUEUE_SIZE

WRITER_FULL = "writer_full"
"""The span writer's queue was full: the process made requests faster than their spans."""
EXPORT_QUEUE_FULL = "export_queue_full"
"""The batch queue was full: the collector takes spans slower than they are made."""
COLLECTOR_FAILING = "collector_failing"
"""The last export failed: dropped rather than queued for a collector that is down."""
EXPORT_FAILED = "export_failed"
"""Spans in a batch the collector did not take."""


class SpanDrops:
    """Counts dropped spans by reason, and logs them at most once a minute (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unreported: dict[str, int] = {}
        self._reported_at = -DROP_LOG_INTERVAL_S
        self.total = 0

    def drop(self, reason: str, spans: int = 1) -> None:
        """Count ``spans`` dropped for ``reason``."""
        service_metrics().spans_dropped.labels(reason).inc(spans)
        with self._lock:
            self.total += spans
            self._unreported[reason] = self._unreported.get(reason, 0) + spans
            now = time.monotonic()
            if now - self._reported_at < DROP_LOG_INTERVAL_S:
                return
            unreported, self._unreported, self._reported_at = self._unreported, {}, now
        logger.warning(
            "spans dropped since the last report (podlatency_spans_dropped_total): %s",
            ", ".join(f"{count} {reason}" for reason, count in sorted(unreported.items())),
        )


def span_drops() -> SpanDrops:
    """The process's drop counter."""
    return _DROPS


_DROPS = SpanDrops()


class _WatchedExporter(SpanExporter):
    """The real exporter, watched: how many spans it was handed, and whether its last export failed."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self.handed = 0
        self.failing = False
        self.failed_at = 0.0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.handed += len(spans)  # only the batch processor's worker (or a flush, under its lock) calls
        try:
            result = self._exporter.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
            raise
        finally:
            self.failing = result is not SpanExportResult.SUCCESS
            if self.failing:
                self.failed_at = time.monotonic()
                span_drops().drop(EXPORT_FAILED, len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class BoundedExport(SpanProcessor):
    """A :class:`BatchSpanProcessor` that drops (and counts) rather than overflow or feed a dead collector."""

    def __init__(self, exporter: SpanExporter, max_queue: int | None = None) -> None:
        self._max_queue = max_queue or int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE))
        self._exporter = _WatchedExporter(exporter)
        self._batch = BatchSpanProcessor(self._exporter, max_queue_size=self._max_queue)
        self._lock = threading.Lock()
        self._passed_on = 0
        self._probed_at = -PROBE_INTERVAL_S

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._batch.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        reason = self._admit()
        if reason is None:
            self._batch.on_end(span)
        else:
            span_drops().drop(reason)

    def _admit(self) -> str | None:
        """``None`` when the span may go to the batch queue, else why it is dropped."""
        with self._lock:
            if self._passed_on - self._exporter.handed >= self._max_queue:
                return EXPORT_QUEUE_FULL
            if self._exporter.failing:
                now = time.monotonic()
                if now - max(self._probed_at, self._exporter.failed_at) < PROBE_INTERVAL_S:
                    return COLLECTOR_FAILING
                self._probed_at = now
            self._passed_on += 1
            return None

    def shutdown(self) -> None:
        self._batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)
