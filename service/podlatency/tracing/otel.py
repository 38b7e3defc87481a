"""OpenTelemetry set-up: which requests are traced, and where their spans go.

Configuration follows the standard ``OTEL_*`` variables: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) turns on the OTLP/HTTP exporter behind a batch span processor
that drops (counted) rather than overflow (:mod:`podlatency.tracing.bounded_export`);
``OTEL_SERVICE_NAME`` names the service (default ``podlatency``). With no endpoint no span is
recorded at all: spans would go nowhere. Tests hand in their own span processor.

A trace is kept for one of three reasons (:mod:`podlatency.tracing.tail_sampling`):

- **head-sampled**: ``OTEL_TRACES_SAMPLER`` (and ``OTEL_TRACES_SAMPLER_ARG``) chose it when it
  arrived. Every sampler is parent-based here: a caller's ``traceparent`` with the sampled flag is
  always followed, so a router that traces its scheduling decision sees our phases. With no sampler
  set the head share is 1% (``parentbased_traceidratio``, 0.01): recording every request's spans
  costs a large share of the throughput (docs/performance.md);
- **slow** or **error**, decided once the request is answered. Those spans are made afterwards by
  a second tracer that records every span it is asked for, into the same span processor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Tracer
from opentelemetry.util.types import AttributeValue

from podlatency.errors import SettingsError
from podlatency.tracing.bounded_export import BoundedExport
from podlatency.tracing.phase_spans import ChosenTraceIds, KeptRoot, SpanWriter
from podlatency.tracing.tail_sampling import NeverSlow, SlowThresholds, kept_reason

TRACER_NAME = "podlatency"
DEFAULT_SERVICE_NAME = "podlatency"
DEFAULT_HEAD_SHARE = 0.01


def otlp_endpoint_configured(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for an OTLP trace exporter."""
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def head_sampler(environ: Mapping[str, str]) -> Sampler:
    """The parent-based head sampler ``OTEL_TRACES_SAMPLER`` names.

    ``always_on``, ``always_off`` and ``traceidratio`` and their ``parentbased_`` forms are accepted,
    and all of them follow a caller's sampled flag. Unset, it is ``parentbased_traceidratio`` with
    ``OTEL_TRACES_SAMPLER_ARG`` as the share (1% when that is unset too). Anything else, or a share
    outside 0..1, stops the process with the variable's name: a typo would otherwise trace nothing,
    or everything.
    """
    chosen = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    name = chosen or "parentbased_traceidratio"
    root_name = name.removeprefix("parentbased_")
    if root_name == "always_on":
        return ParentBased(ALWAYS_ON)
    if root_name == "always_off":
        return ParentBased(ALWAYS_OFF)
    if root_name == "traceidratio":
        # The OpenTelemetry default share is 1.0; podlatency's own default (no sampler named) is 1%.
        raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0" if chosen else str(DEFAULT_HEAD_SHARE)).strip()
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise SettingsError(f"OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, got {raw!r}")
        return ParentBased(TraceIdRatioBased(ratio))
    raise SettingsError(
        "OTEL_TRACES_SAMPLER must be always_on, always_off or traceidratio (optionally parentbased_), "
        f"got {name!r}"
    )


@dataclass(frozen=True, slots=True)
class Tracing:
    """A process's tracing: the tracers, the span writer and the slow thresholds.

    ``head`` starts each request's server span as its sampler decides; ``kept`` (``None`` when spans go
    nowhere) makes the spans of requests kept afterwards, with ``trace_ids`` choosing their trace ids;
    both feed the same span processor.
    """

    head: Tracer
    kept: Tracer | None
    trace_ids: ChosenTraceIds
    writer: SpanWriter
    slow: SlowThresholds
    provider: TracerProvider

    @classmethod
    def to(
        cls,
        processor: SpanProcessor | None,
        *,
        sampler: Sampler,
        slow: SlowThresholds | None = None,
        resource: Resource | None = None,
    ) -> Tracing:
        """Tracing whose spans go to ``processor`` (``None``: nowhere, and nothing is recorded)."""
        if processor is None:
            provider = TracerProvider(sampler=ALWAYS_OFF, resource=resource)
            tracer = provider.get_tracer(TRACER_NAME)
            return cls(tracer, None, ChosenTraceIds(), SpanWriter(), NeverSlow(), provider)
        shared = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
        shared.add_span_processor(processor)
        provider = TracerProvider(sampler=sampler, resource=resource, active_span_processor=shared)
        trace_ids = ChosenTraceIds()
        kept_provider = TracerProvider(
            sampler=ALWAYS_ON,
            resource=resource,
            active_span_processor=shared,
            id_generator=trace_ids,
            shutdown_on_exit=False,  # the head provider shuts the shared processor down
        )
        return cls(
            provider.get_tracer(TRACER_NAME),
            kept_provider.get_tracer(TRACER_NAME),
            trace_ids,
            SpanWriter(),
            slow or NeverSlow(),
            provider,
        )

    @classmethod
    def from_env(cls, slow: SlowThresholds, environ: Mapping[str, str] | None = None) -> Tracing:
        """Tracing as the ``OTEL_*`` variables configure it (OTLP/HTTP when an endpoint is set)."""
        env = os.environ if environ is None else environ
        attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
        sampler = head_sampler(env)  # checked even when nothing exports: a typo shows at start-up
        processor: SpanProcessor | None = None
        if otlp_endpoint_configured(env):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )

            processor = BoundedExport(OTLPSpanExporter())
        return cls.to(processor, sampler=sampler, slow=slow, resource=Resource.create(attributes))

    def kept_reason(self, route: str, head_sampled: bool, status: int, seconds: float) -> str | None:
        """Why an answered request's trace is kept (``None``: it is not), counting its server time.

        ``None`` too when spans go nowhere. Called from the event loop only (the thresholds have no lock).
        """
        slow = self.slow
        # Counted first, so that after an idle spell the window has moved on before it is read.
        slow.observe(route, seconds, time.monotonic())
        reason = kept_reason(head_sampled, status, seconds, slow.seconds(route))
        return reason if head_sampled or self.kept is not None else None

    def kept_root(
        self,
        name: str,
        trace_id: int,
        parent: Context | None,
        times_ns: tuple[int, int],
        attributes: dict[str, AttributeValue],
    ) -> KeptRoot:
        """The server span of a request kept once answered (spans are exported: :attr:`kept` is set)."""
        if self.kept is None:
            raise RuntimeError("no span is kept while spans go nowhere")
        status = attributes.get("http.response.status_code")
        error = isinstance(status, int) and status >= 500
        return KeptRoot(self.kept, self.trace_ids, name, trace_id, parent, *times_ns, attributes, error)

    def close(self) -> None:
        """Make the spans still queued, then flush and stop the exporter."""
        self.writer.close()
        self.provider.shutdown()
