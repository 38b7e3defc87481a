"""``make bench``, what tracing costs: one server with tracing off, at the defaults, and tracing everything.

The same podlatency server three times, measured in interleaved rounds of 16 keep-alive clients:
with no OTLP endpoint (nothing recorded), with an endpoint and the defaults (1% head share, and the
traces of slow and failed requests kept), and with every request's spans recorded (``always_on``).
The two tracing servers export over OTLP/HTTP to receivers in this process, which count the traces
kept and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from measure.otlp_receiver import OtlpReceiver
from measure.servers import LocalServer, loaded_point

TRACING = ("off", "defaults", "every request")


def tracing_cost(
    start: Callable[[dict[str, str]], LocalServer], body: bytes, *, clients: int, seconds: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """Each tracing set-up's best round, requests served, and the ``/v1/predict`` traces kept by reason."""
    receivers = {name: OtlpReceiver(keep_spans=False) for name in TRACING[1:]}
    envs: dict[str, dict[str, str]] = {"off": {}}
    for name, receiver in receivers.items():
        envs[name] = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    envs["every request"]["OTEL_TRACES_SAMPLER"] = "always_on"
    servers: dict[str, LocalServer] = {}
    results: dict[str, dict[str, Any]] = {name: {"requests": 0} for name in TRACING}
    try:
        for name in TRACING:
            servers[name] = start(envs[name])
        for _ in range(rounds):
            for name in TRACING:
                point = loaded_point(servers[name], body, clients, seconds)
                results[name]["requests"] += point["count"]
                best = results[name].get("concurrent")
                if best is None or point["rps"] > best["rps"]:
                    results[name]["concurrent"] = point | {"clients": clients}
        time.sleep(2.0)  # the last spans are exported
        for name, receiver in receivers.items():
            results[name]["kept_traces"] = receiver.kept_counts("POST /v1/predict")
            results[name]["spans_received"] = receiver.span_count
    finally:
        for server in servers.values():
            server.stop()
        for receiver in receivers.values():
            receiver.close()
    off_rps = results["off"]["concurrent"]["rps"]
    for name in TRACING:
        results[name]["rps_over_off"] = round(results[name]["concurrent"]["rps"] / off_rps, 3)
    return results


def tracing_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """The comparison as printed lines."""
    lines = []
    for name in TRACING:
        figures = results[name]
        point = figures["concurrent"]
        line = (
            f"tracing {name:14s} {point['clients']} clients {point['rps']:.0f} req/s "
            f"({figures['rps_over_off']:.2f}x off), p99 {point['p99_ms']:.2f} ms"
        )
        if "kept_traces" in figures:
            requests, kept = figures["requests"], sorted(figures["kept_traces"].items())
            shares = ", ".join(f"{count} {reason} ({count / requests:.2%})" for reason, count in kept)
            line += f"; of {figures['requests']} requests, traces kept: {shares or 'none'}"
        lines.append(line)
    return lines
