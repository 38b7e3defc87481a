"""Tracing set-up from the standard OTEL_* variables, the keeping rules, and the span writer."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.util.types import AttributeValue

from podlatency.errors import SettingsError
from podlatency.metrics import service_metrics
from podlatency.settings import Settings
from podlatency.tracing.bounded_export import PROBE_INTERVAL_S, BoundedExport, span_drops
from podlatency.tracing.otel import Tracing, head_sampler
from podlatency.tracing.phase_spans import PhaseRecorder, SpanWriter
from podlatency.tracing.tail_sampling import (
    ERROR,
    SAMPLED,
    SLOW,
    FixedThreshold,
    NeverSlow,
    RollingP99,
    bucket_of,
    kept_reason,
    slow_thresholds,
    upper_edge,
)


def samples_new_trace(sampler: Sampler, trace_id: int = 1) -> bool:
    """Whether ``sampler`` records a new root span with ``trace_id`` (asked without making one)."""
    decision = sampler.should_sample(None, trace_id=trace_id, name="request").decision
    return decision == Decision.RECORD_AND_SAMPLE


def under_caller(sampled: bool) -> bool:
    """Whether the head sampler (never sampling roots) records a span under a caller's ``traceparent``."""
    caller = SpanContext(trace_id=7, span_id=9, is_remote=True, trace_flags=TraceFlags(int(sampled)))
    parent = trace.set_span_in_context(NonRecordingSpan(caller))
    decision = head_sampler({"OTEL_TRACES_SAMPLER": "always_off"}).should_sample(parent, 7, "request")
    return decision.decision == Decision.RECORD_AND_SAMPLE


def test_no_endpoint_records_nothing_and_keeps_nothing() -> None:
    """Without an OTLP endpoint no span is recorded, whatever the sampler: spans would go nowhere."""
    tracing = Tracing.from_env(RollingP99(), {"OTEL_TRACES_SAMPLER": "always_on"})
    assert tracing.kept is None
    assert not tracing.head.start_span("request").is_recording()
    assert tracing.kept_reason("/v1/predict", head_sampled=False, status=500, seconds=1.0) is None
    tracing.close()


def test_endpoint_turns_tracing_on_with_a_one_percent_head_share() -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set and no sampler chosen, 1% of new traces are head-sampled."""
    tracing = Tracing.from_env(RollingP99(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert tracing.kept is not None
    assert tracing.provider.resource.attributes["service.name"] == "podlatency"
    sampler = tracing.provider.sampler
    trace_ids = random.Random(0)  # noqa: S311  (trace ids, as the SDK makes them)
    share = sum(samples_new_trace(sampler, trace_ids.getrandbits(128)) for _ in range(20_000)) / 20_000
    assert 0.005 < share < 0.015
    tracing.close()


def test_the_share_alone_sets_the_default_samplers_share() -> None:
    """OTEL_TRACES_SAMPLER_ARG without a sampler named changes the default 1% (the documented way)."""
    sampler = head_sampler({"OTEL_TRACES_SAMPLER_ARG": "0.5"})
    trace_ids = random.Random(1)  # noqa: S311  (trace ids, as the SDK makes them)
    share = sum(samples_new_trace(sampler, trace_ids.getrandbits(128)) for _ in range(20_000)) / 20_000
    assert 0.47 < share < 0.53


def test_every_sampler_follows_a_sampled_caller() -> None:
    """A caller's sampled traceparent is followed even by always_off; an unsampled one is not."""
    assert under_caller(sampled=True)
    assert not under_caller(sampled=False)
    everything = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"}
    assert samples_new_trace(head_sampler(everything))


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "SAMPLER_ARG"),
    ],
)
def test_a_bad_sampler_stops_start_up_naming_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        head_sampler(environ)


@pytest.mark.parametrize("value", ["auto", "off", "OFF", "12.5", "250"])
def test_slow_ms_setting_accepts_auto_off_and_milliseconds(value: str) -> None:
    settings = Settings.from_env({"PODLATENCY_TRACE_SLOW_MS": value})
    rule = slow_thresholds(settings.trace_slow_ms)
    expected = {"auto": RollingP99, "off": NeverSlow}.get(value.lower(), FixedThreshold)
    assert isinstance(rule, expected)


@pytest.mark.parametrize("value", ["fast", "0", "-5", "inf", ""])
def test_slow_ms_setting_refuses_anything_else(value: str) -> None:
    with pytest.raises(SettingsError, match="PODLATENCY_TRACE_SLOW_MS"):
        Settings.from_env({"PODLATENCY_TRACE_SLOW_MS": value})


def test_kept_reason_prefers_error_then_slow_then_sampled() -> None:
    assert kept_reason(True, 503, 0.001, 0.01) == ERROR
    assert kept_reason(False, 500, 0.001, None) == ERROR
    assert kept_reason(True, 200, 0.02, 0.01) == SLOW
    assert kept_reason(True, 200, 0.005, 0.01) == SAMPLED
    assert kept_reason(False, 200, 0.005, 0.01) is None
    assert kept_reason(False, 422, 5.0, None) is None


def test_buckets_hold_their_values() -> None:
    """Each server time lands in the bucket whose upper edge is the first at or above it."""
    for seconds in (1e-6, 1e-5, 3.3e-4, 0.00075, 0.0123, 1.0, 42.0):
        bucket = bucket_of(seconds)
        assert seconds <= upper_edge(bucket) * (1 + 1e-9)
        assert bucket == 0 or seconds > upper_edge(bucket - 1)


def test_rolling_p99_needs_enough_requests_then_keeps_about_one_percent() -> None:
    """No threshold before 100 requests; then about the slowest 1% exceed it, per route."""
    rule = RollingP99()
    durations = [0.001 + 0.00001 * (index % 1000) for index in range(5000)]  # 1.0 .. 11 ms
    for index, seconds in enumerate(durations[:99]):
        rule.observe("/v1/predict", seconds, now_s=index * 0.001)
    assert rule.seconds("/v1/predict") is None
    for index, seconds in enumerate(durations[99:]):
        rule.observe("/v1/predict", seconds, now_s=0.1 + index * 0.001)
    threshold = rule.seconds("/v1/predict")
    assert threshold is not None
    assert sum(seconds > threshold for seconds in durations) / len(durations) <= 0.01
    assert 0.0109 <= threshold < 0.0109 * 1.1  # the p99, read at its bucket's upper edge (10% wide)
    assert rule.seconds("/v1/predict") == threshold
    assert rule.seconds("/predict") is None  # other routes have their own window


def test_rolling_p99_forgets_requests_older_than_the_window() -> None:
    """A minute after a slow spell, the threshold follows the fast requests that came since."""
    rule = RollingP99()
    for index in range(1000):
        rule.observe("/v1/predict", 0.050, now_s=index * 0.01)  # 10 s of 50 ms requests
    slow_threshold = rule.seconds("/v1/predict")
    assert slow_threshold is not None
    assert slow_threshold >= 0.050
    for index in range(1000):
        rule.observe("/v1/predict", 0.001, now_s=70.0 + index * 0.01)
    threshold = rule.seconds("/v1/predict")
    assert threshold is not None
    assert threshold < 0.0012


def test_unkept_requests_get_metrics_but_no_spans() -> None:
    """A recorder under an unsampled request makes no spans, yet still feeds the phase histogram."""
    exporter = InMemorySpanExporter()
    tracing = Tracing.to(SimpleSpanProcessor(exporter), sampler=ParentBased(ALWAYS_OFF))
    histogram = service_metrics().phase_seconds.labels("/unsampled-test", "decode")
    before = histogram._sum.get()
    with tracing.head.start_as_current_span("request"):
        recorder = PhaseRecorder(tracing.head, tracing.writer, "/unsampled-test")
        recorder.record("decode", 1_000, 3_000_000)
        recorder.submit()
    assert tracing.writer.flush()
    tracing.close()
    assert exporter.get_finished_spans() == ()
    assert histogram._sum.get() - before == pytest.approx(0.002999)


def test_a_kept_root_gets_its_chosen_trace_id_and_its_phases() -> None:
    """An unsampled request kept afterwards: a server span with its arrival trace id, phases under it."""
    exporter = InMemorySpanExporter()
    tracing = Tracing.to(SimpleSpanProcessor(exporter), sampler=ParentBased(ALWAYS_OFF))
    with tracing.head.start_as_current_span("request") as unsampled:
        recorder = PhaseRecorder(tracing.head, tracing.writer, "/kept-test")
        recorder.record("decode", 1_000, 2_000)
    trace_id = unsampled.get_span_context().trace_id
    attributes: dict[str, AttributeValue] = {"http.response.status_code": 503}
    attributes["podlatency.trace.kept"] = "error"
    recorder.keep(tracing.kept_root("POST /kept-test", trace_id, None, (500, 3_000), attributes))
    recorder.submit()
    assert tracing.writer.flush()
    tracing.close()
    root, phase = sorted(exporter.get_finished_spans(), key=lambda span: span.name)
    assert root.name == "POST /kept-test"
    assert root.context.trace_id == trace_id
    assert root.status.status_code.name == "ERROR"
    assert root.attributes is not None
    assert root.attributes["podlatency.trace.kept"] == "error"
    assert phase.name == "decode"
    assert phase.parent is not None
    assert phase.parent.span_id == root.context.span_id
    assert (phase.start_time, phase.end_time) == (1_000, 2_000)


def test_a_full_span_writer_drops_counts_and_logs_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Past its queue limit the writer drops kept requests' spans, counts each, and logs once a minute."""
    tracing = Tracing.to(SimpleSpanProcessor(InMemorySpanExporter()), sampler=ALWAYS_ON)
    writer = SpanWriter(max_pending=0)  # full from the start
    counter = service_metrics().spans_dropped.labels("writer_full")
    before = counter._value.get()
    caplog.set_level("WARNING", logger="podlatency.tracing.bounded_export")
    with tracing.head.start_as_current_span("request"):
        span_drops()._reported_at = time.monotonic() - 61  # as if the last report were a minute ago
        for _ in range(5):
            recorder = PhaseRecorder(tracing.head, writer, "/dropped-test")
            recorder.record("decode", 1_000, 2_000)
            recorder.record("encode", 2_000, 3_000)
            recorder.submit()
    assert counter._value.get() - before == 10
    warnings = [record for record in caplog.records if "spans dropped" in record.message]
    assert len(warnings) == 1, "logged at most once a minute"
    assert "writer_full" in warnings[0].message


class CollectorDown(InMemorySpanExporter):
    """An in-memory exporter that fails while ``down`` (as the OTLP exporter does when nothing listens)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches += 1
        return SpanExportResult.FAILURE if self.down else super().export(spans)


def ended_span(tracer_provider: TracerProvider, name: str = "phase") -> None:
    tracer_provider.get_tracer("t").start_span(name).end()


def dropped(reason: str) -> float:
    value: float = service_metrics().spans_dropped.labels(reason)._value.get()
    return value


def test_bounded_export_probes_a_failing_collector_and_counts_what_it_drops() -> None:
    """While the collector fails, one span per probe interval goes out and the rest are counted.

    Once a probe succeeds, spans flow again.
    """
    exporter = CollectorDown()
    export = BoundedExport(exporter)
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(export)
    failed, failing = dropped("export_failed"), dropped("collector_failing")
    ended_span(provider)
    assert export.force_flush()
    assert dropped("export_failed") - failed == 1
    for _ in range(100):
        ended_span(provider)
    assert dropped("collector_failing") - failing == 100, "the probe interval has not passed"
    export._exporter.failed_at -= PROBE_INTERVAL_S  # as if it had
    exporter.down = False
    for _ in range(3):
        ended_span(provider, "after")
    assert export.force_flush()
    assert dropped("collector_failing") - failing == 102, "one probe goes out, the rest wait for its answer"
    ended_span(provider, "after")
    assert export.force_flush()
    assert [span.name for span in exporter.get_finished_spans()] == ["after", "after"]
    provider.shutdown()


def test_bounded_export_never_lets_the_batch_queue_overflow() -> None:
    """More spans than the batch queue holds, with the exporter stuck: the excess is counted, not queued."""
    release = threading.Event()

    class Stuck(InMemorySpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            release.wait(10)
            return super().export(spans)

    exporter = Stuck()
    export = BoundedExport(exporter, max_queue=600)
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(export)
    full = dropped("export_queue_full")
    for _ in range(3000):
        ended_span(provider)
    release.set()
    assert export.force_flush()
    exported = len(exporter.get_finished_spans())
    assert exported + dropped("export_queue_full") - full == 3000
    assert exported <= 600 + 512  # a queue's worth, and at most one batch taken while it was full
    provider.shutdown()


def test_after_an_idle_spell_a_request_is_judged_by_the_current_window() -> None:
    """A minute of quiet empties the window: the next request is not judged against an old p99."""
    tracing = Tracing.to(SimpleSpanProcessor(InMemorySpanExporter()), sampler=ALWAYS_OFF, slow=RollingP99())
    rule = tracing.slow
    for index in range(200):
        rule.observe("/v1/predict", 0.001, now_s=time.monotonic() - 120 + index * 0.01)
    assert rule.seconds("/v1/predict") is not None
    assert tracing.kept_reason("/v1/predict", head_sampled=False, status=200, seconds=0.5) is None
    assert rule.seconds("/v1/predict") is None, "the old window was forgotten before the request was judged"
    tracing.close()
