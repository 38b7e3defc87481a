"""Traces kept by outcome, from real server processes over OTLP/HTTP into a real receiver.

Slow requests and failed ones arrive although the head sampler passed them over; a caller's sampled
``traceparent`` is followed; with the collector down, memory stays flat and drops are counted.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from measure.clients import concurrent
from measure.otlp_receiver import OtlpReceiver, attribute
from podlatency.learning.workload import pod_rows
from tests.integration.conftest import ServerProcess, corrupt_copy

PHASES = {
    "dispatch", "decode", "frame", "batch_wait", "predict_ttft", "predict_tpot", "resume", "encode",
    "respond",
}  # fmt: skip
SMALL, LARGE = 1000, 5
LARGE_PODS = 4000


def traced(
    start_server: Callable[..., ServerProcess], model_dir: Path, receiver: OtlpReceiver, **env: str
) -> Any:
    """A server exporting to ``receiver`` every 100 ms, with the tracing defaults unless ``env`` says."""
    return start_server(
        model_dir,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        PODLATENCY_LOG_LEVEL="warning",
        **env,
    )


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def servers_of(spans: list[Span]) -> list[Span]:
    return [span for span in spans if span.kind == Span.SPAN_KIND_SERVER]


def test_large_requests_are_kept_as_slow_and_small_ones_at_about_the_head_share(
    model_dir: Path, start_server: Any, otlp_receiver: OtlpReceiver
) -> None:
    """1,000 7-pod requests and 5 of 4,000 pods, at the tracing defaults (1% head share, auto p99).

    Every large request arrives with all its phase spans and ``kept=slow``; small requests arrive at
    no more than about the head share plus 1%. The large ones take tens of milliseconds, far above
    what CPU contention from tests beside this one adds to the small ones' p99.
    """
    server = traced(start_server, model_dir, otlp_receiver, PODLATENCY_MAX_PODS=str(LARGE_PODS))
    server.wait_for("/readyz", 200)
    server.wait_for_engine("compiled")
    large_at = {200 + index * 150 for index in range(LARGE)}  # after the p99 has 100 requests to go on
    for index in range(SMALL):
        if index in large_at:
            large_body = {"pods": pod_rows(LARGE_PODS, seed=index)}
            assert server.request("POST", "/v1/predict", large_body).status == 200
        assert server.request("POST", "/v1/predict", {"pods": pod_rows(7, seed=index)}).status == 200

    def large_traces() -> set[bytes]:
        frames = [span for span in otlp_receiver.snapshot() if span.name == "frame"]
        return {span.trace_id for span in frames if attribute(span, "podlatency.pods") == LARGE_PODS}

    wait_until(lambda: len(large_traces()) == LARGE, "every large request's trace arrives")
    time.sleep(0.5)  # the last export of small requests
    spans = otlp_receiver.snapshot()
    large = large_traces()
    for trace_id in large:
        in_trace = [span for span in spans if span.trace_id == trace_id]
        (root,) = servers_of(in_trace)
        assert attribute(root, "podlatency.trace.kept") == "slow"
        assert {span.name for span in in_trace if span.parent_span_id == root.span_id} == PHASES
    small = [span for span in servers_of(spans) if span.trace_id not in large]
    reasons = {attribute(span, "podlatency.trace.kept") for span in small}
    assert reasons <= {"sampled", "slow"}, reasons
    print(f"kept {len(small)} of {SMALL} small requests: {sorted(reasons)}")
    assert len(small) <= 0.02 * SMALL + 15, f"{len(small)} of {SMALL} small requests kept"


def test_a_model_fault_and_shed_requests_are_kept_as_error(
    tmp_path: Path, model_dir: Path, start_server: Any, otlp_receiver: OtlpReceiver
) -> None:
    """A corrupt model: /v1/predict 503 and /reload 500, both kept. Requests shed with 503, kept."""
    folder = corrupt_copy(model_dir, tmp_path / "models")
    faulty = traced(start_server, folder, otlp_receiver, OTEL_TRACES_SAMPLER="always_off")
    faulty.wait_for("/readyz", 503)
    assert faulty.request("POST", "/v1/predict", {"pods": pod_rows(2)}).status == 503
    assert faulty.request("POST", "/reload").status == 500
    wait_until(lambda: len(servers_of(otlp_receiver.snapshot())) >= 2, "both failed requests arrive")
    by_name = {span.name: span for span in servers_of(otlp_receiver.snapshot())}
    assert set(by_name) == {"POST /v1/predict", "POST /reload"}
    assert attribute(by_name["POST /reload"], "http.response.status_code") == 500
    for root in by_name.values():
        assert attribute(root, "podlatency.trace.kept") == "error"
        assert root.status.code == root.status.STATUS_CODE_ERROR

    busy = traced(
        start_server,
        model_dir,
        otlp_receiver,
        OTEL_TRACES_SAMPLER="always_off",
        PODLATENCY_TRACE_SLOW_MS="off",
        PODLATENCY_MAX_IN_FLIGHT="1",
        PODLATENCY_BATCHING="false",
    )
    busy.wait_for("/readyz", 200)
    body = {"pods": pod_rows(1000, seed=3)}
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda _: busy.request("POST", "/v1/predict", body).status, range(120)))
    shed = statuses.count(503)
    assert shed, "12 concurrent clients never exceeded 1 request in flight"
    assert set(statuses) <= {200, 503}

    def shed_roots() -> list[Span]:
        roots = servers_of(otlp_receiver.snapshot())
        return [span for span in roots if span.name == "POST /v1/predict" and span not in faulty_roots]

    faulty_roots = list(by_name.values())
    wait_until(lambda: len(shed_roots()) == shed, f"all {shed} shed requests arrive")
    for root in shed_roots():
        assert attribute(root, "podlatency.trace.kept") == "error"
        assert attribute(root, "http.response.status_code") == 503, "answered requests are not kept here"


def test_a_sampled_traceparent_arrives_inside_the_callers_trace(
    model_dir: Path, start_server: Any, otlp_receiver: OtlpReceiver
) -> None:
    """At the default 1% head share, a caller's sampled traceparent always gets our spans in its trace."""
    server = traced(start_server, model_dir, otlp_receiver, PODLATENCY_TRACE_SLOW_MS="off")
    server.wait_for("/readyz", 200)
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    for _ in range(5):
        headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
        answer = server.request("POST", "/v1/predict", {"pods": pod_rows(7)}, headers=headers)
        assert answer.status == 200
    # Server spans and phase spans leave in separate exports: wait for all of them.
    wait_until(
        lambda: len(otlp_receiver.snapshot()) >= 5 * (1 + len(PHASES)), "the five traced requests arrive"
    )
    roots = servers_of(otlp_receiver.snapshot())
    assert {root.trace_id.hex() for root in roots} == {trace_id}
    assert {root.parent_span_id.hex() for root in roots} == {parent_id}
    assert {attribute(root, "podlatency.trace.kept") for root in roots} == {"sampled"}
    phases = [span for span in otlp_receiver.snapshot() if span.kind != Span.SPAN_KIND_SERVER]
    assert len(phases) == 5 * len(PHASES)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.slow
def test_collector_down_for_two_minutes_keeps_memory_flat_and_counts_drops(
    tmp_path: Path, model_dir: Path
) -> None:
    """Every request traced (always_on) to a collector that is down, at load for two minutes.

    Serving is unaffected (no failed request), resident memory does not grow after a 20-second
    warm-up, and the spans that could not go out are counted in podlatency_spans_dropped_total.
    """
    seconds = int(os.environ.get("PODLATENCY_COLLECTOR_DOWN_SECONDS", "120"))
    server = ServerProcess(
        model_dir,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
            "PODLATENCY_LOG_LEVEL": "warning",
        },
    ).launch(tmp_path)
    try:
        server.wait_for("/readyz", 200)
        body = json.dumps({"pods": pod_rows(7, seed=1)}).encode()
        warm_up = concurrent(server.port, body, clients=8, seconds=20)
        start_mb = server.rss_mb()
        loaded = concurrent(server.port, body, clients=8, seconds=seconds - 20)
        end_mb = server.rss_mb()
        metrics = server.request("GET", "/metrics").body.decode()
    finally:
        server.stop()
    dropped = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("podlatency_spans_dropped_total{")
    )
    requests = warm_up["count"] + loaded["count"]
    print(
        f"collector down {seconds} s: {requests:.0f} requests ({loaded['rps']:.0f}/s, p99 "
        f"{loaded['p99_ms']} ms), {dropped:.0f} spans dropped, RSS {start_mb:.1f} -> {end_mb:.1f} MB"
    )
    assert dropped > requests, "most of ten spans per request were dropped, and counted"
    assert end_mb < start_mb * 1.05 + 5, (start_mb, end_mb)
    assert "Queue full" not in server.log(), "the batch queue never overflowed"
