"""Tracer set-up from the standard OTEL_* variables, and phase spans only for sampled requests."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision

from podlatency.metrics import service_metrics
from podlatency.tracing import PhaseRecorder, SpanWriter, build_tracer_provider


def sampled(provider: TracerProvider) -> bool:
    """Whether the provider's sampler would record a new root span (asked without making one)."""
    decision = provider.sampler.should_sample(None, trace_id=1, name="request").decision
    return decision == Decision.RECORD_AND_SAMPLE


def test_no_endpoint_records_no_spans() -> None:
    """Without an OTLP endpoint (and no sampler chosen) nothing is sampled: spans would go nowhere."""
    assert not sampled(build_tracer_provider({}))


def test_endpoint_turns_tracing_on() -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, requests are sampled and the service is named."""
    provider = build_tracer_provider({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert sampled(provider)
    assert provider.resource.attributes["service.name"] == "podlatency"
    provider.shutdown()


def test_explicit_sampler_wins() -> None:
    """OTEL_TRACES_SAMPLER set by the user is honoured even without an endpoint."""
    assert sampled(build_tracer_provider({"OTEL_TRACES_SAMPLER": "always_on"}))


def test_unsampled_requests_get_metrics_but_no_spans() -> None:
    """A recorder under an unsampled request makes no spans, yet still feeds the phase histogram."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    writer = SpanWriter()
    histogram = service_metrics().phase_seconds.labels("/unsampled-test", "decode")
    before = histogram._sum.get()
    with tracer.start_as_current_span("request"):
        recorder = PhaseRecorder(tracer, writer, "/unsampled-test")
        recorder.record("decode", 1_000, 3_000_000)
        recorder.submit()
    assert writer.flush()
    writer.close()
    assert exporter.get_finished_spans() == ()
    assert histogram._sum.get() - before == pytest.approx(0.002999)


def test_a_full_span_writer_drops_counts_and_logs_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Past its queue limit the writer drops sampled requests' spans, counts each, and logs once a minute."""
    tracer = TracerProvider().get_tracer("t")  # samples every request
    writer = SpanWriter(max_pending=0)  # full from the start
    counter = service_metrics().spans_dropped
    before = counter._value.get()
    with caplog.at_level("WARNING", logger="podlatency.tracing"), tracer.start_as_current_span("request"):
        for _ in range(5):
            recorder = PhaseRecorder(tracer, writer, "/dropped-test")
            recorder.record("decode", 1_000, 2_000)
            recorder.submit()
    assert writer.dropped == 5
    assert counter._value.get() - before == 5
    warnings = [record for record in caplog.records if "span writer queue full" in record.message]
    assert len(warnings) == 1, "logged at most once a minute"
