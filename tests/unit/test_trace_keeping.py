"""Traces kept by outcome, in process: slow and failed requests the head sampler passed over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind

from podlatency.learning.workload import pod_rows
from podlatency.runtime import Runtime
from podlatency.tracing.otel import Tracing
from podlatency.tracing.tail_sampling import FixedThreshold, NeverSlow, SlowThresholds
from podlatency.web.app import create_app
from tests.unit.test_app import PHASES, cpu_settings, wait_ready

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def never_head_sampled(exporter: InMemorySpanExporter, slow: SlowThresholds) -> Tracing:
    """No request is head-sampled (unless its caller's traceparent says so); spans go to ``exporter``."""
    return Tracing.to(SimpleSpanProcessor(exporter), sampler=ParentBased(ALWAYS_OFF), slow=slow)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def keeping_everything_slow(
    model_dir: Path, exporter: InMemorySpanExporter
) -> Iterator[tuple[TestClient[Any], Runtime]]:
    """Every request is slower than 1 microsecond, so every one is kept as slow."""
    runtime = Runtime(cpu_settings(model_dir), never_head_sampled(exporter, FixedThreshold(0.001)))
    with TestClient(create_app(runtime)) as client:
        wait_ready(client)
        yield client, runtime


def one_prediction(
    keeping: tuple[TestClient[Any], Runtime], exporter: InMemorySpanExporter, pods: int
) -> tuple[ReadableSpan, tuple[ReadableSpan, ...]]:
    """Predict ``pods`` pods once; the request's server span and every span exported for it."""
    client, runtime = keeping
    exporter.clear()
    assert client.post("/v1/predict", json={"pods": pod_rows(pods)}).status_code == 200
    assert runtime.tracing.writer.flush()
    spans = exporter.get_finished_spans()
    (server,) = [span for span in spans if span.kind == SpanKind.SERVER]
    return server, spans


def test_a_slow_request_is_kept_with_every_phase(
    keeping_everything_slow: tuple[TestClient[Any], Runtime], exporter: InMemorySpanExporter
) -> None:
    """An unsampled request over the threshold arrives as a server span tagged slow, its phases under it."""
    server, spans = one_prediction(keeping_everything_slow, exporter, pods=3)
    assert server.name == "POST /v1/predict"
    assert server.attributes is not None
    assert server.attributes["podlatency.trace.kept"] == "slow"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/predict"
    assert server.parent is None
    phases = [
        span for span in spans if span.parent is not None and span.parent.span_id == server.context.span_id
    ]
    assert {span.name for span in phases} == PHASES
    times = [(span.start_time or 0, span.end_time or 0) for span in [server, *phases]]
    (server_start, server_end), phase_times = times[0], times[1:]
    assert all(server_start <= start <= end <= server_end for start, end in phase_times)


def test_kept_requests_leave_their_trace_id_as_an_exemplar(
    keeping_everything_slow: tuple[TestClient[Any], Runtime], exporter: InMemorySpanExporter
) -> None:
    """Scraped as OpenMetrics, the request-duration histogram names the kept request's trace."""
    server, _ = one_prediction(keeping_everything_slow, exporter, pods=2)
    client, _ = keeping_everything_slow
    scrape = client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert scrape.headers["content-type"].startswith("application/openmetrics-text")
    trace_id = format(server.context.trace_id, "032x")
    exemplars = [
        line for line in scrape.text.splitlines()
        if line.startswith("podlatency_request_duration_seconds_bucket") and 'path="/v1/predict"' in line
        and f'trace_id="{trace_id}"' in line
    ]  # fmt: skip
    assert len(exemplars) == 1, "the request's bucket carries its trace id"
    bucket = "podlatency_request_duration_seconds_bucket"
    assert any(line.startswith(bucket) and 'le="0.0005"' in line for line in scrape.text.splitlines())
    plain = client.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert "trace_id" not in plain.text


def test_a_server_error_is_kept_as_error(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    """A 503 before any model is loaded is kept (error) although nothing is head-sampled or slow."""
    runtime = Runtime(cpu_settings(tmp_path), never_head_sampled(exporter, NeverSlow()))
    with TestClient(create_app(runtime, load_model=False)) as client:
        assert client.post("/v1/predict", json={"pods": pod_rows(1)}).status_code == 503
        assert client.get("/v1/model").status_code == 503
        assert runtime.tracing.writer.flush()
    servers = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER]
    assert sorted(span.name for span in servers) == ["GET /v1/model", "POST /v1/predict"]
    for server in servers:
        assert server.attributes is not None
        assert server.attributes["podlatency.trace.kept"] == "error"
        assert server.attributes["error.type"] == "503"
        assert server.status.status_code.name == "ERROR"


def test_fast_successful_unsampled_requests_leave_no_spans(
    model_dir: Path, exporter: InMemorySpanExporter
) -> None:
    """Not head-sampled, not slow, not failed: no span at all, and no exemplar."""
    runtime = Runtime(cpu_settings(model_dir), never_head_sampled(exporter, NeverSlow()))
    with TestClient(create_app(runtime)) as client:
        wait_ready(client)
        for index in range(5):
            assert client.post("/v1/predict", json={"pods": pod_rows(2, seed=index)}).status_code == 200
        assert client.post("/v1/predict", json={"pods": []}).status_code == 422  # a client's error: not kept
        assert runtime.tracing.writer.flush()
    assert exporter.get_finished_spans() == ()


def test_a_sampled_caller_is_followed_and_tagged_sampled(
    model_dir: Path, exporter: InMemorySpanExporter
) -> None:
    """A caller's sampled traceparent puts our spans in its trace, tagged sampled, whatever the head share."""
    runtime = Runtime(cpu_settings(model_dir), never_head_sampled(exporter, NeverSlow()))
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with TestClient(create_app(runtime)) as client:
        wait_ready(client)
        headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
        assert client.post("/v1/predict", json={"pods": pod_rows(2)}, headers=headers).status_code == 200
        unsampled = {"traceparent": f"00-{trace_id}-{parent_id}-00"}
        assert client.post("/v1/predict", json={"pods": pod_rows(2)}, headers=unsampled).status_code == 200
        assert runtime.tracing.writer.flush()
    spans = exporter.get_finished_spans()
    (server,) = [span for span in spans if span.kind == SpanKind.SERVER]
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == parent_id
    assert server.attributes is not None
    assert server.attributes["podlatency.trace.kept"] == "sampled"
    assert {span.name for span in spans if span.kind != SpanKind.SERVER} == PHASES
