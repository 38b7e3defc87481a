"""Ingestion: how fast a trainer takes the router's observations (``/add_training_data_bulk``).

One keep-alive client posts bulk requests of router-shaped rows back to back, as a router flushing
its buffer would; each answer must be 202. Reported: the per-request latency (p50, p99), rows per
second over the whole run, and the server's CPU time per row (read from ``/proc``). The trainer
scores each request's rows on its own thread after answering, so that work shows in the rows per
second and the CPU per row, not in the latency of the request that brought them.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import msgspec

from measure.clients import LatencySummary
from measure.servers import LocalServer
from podlatency.learning.workload import router_observations

INGESTION_ROWS = 10_000
"""Rows per bulk request: the most llm-d's API takes in one."""
TRAINER_ENV = {"PODLATENCY_RETRAIN_INTERVAL_S": "0"}
"""A trainer that takes rows and does not retrain while it is measured."""


def bulk_body(rows: int, seed: int = 0) -> bytes:
    """A ``/add_training_data_bulk`` body of ``rows`` router rows (every request streamed: 2 rows each)."""
    return msgspec.json.encode({"entries": router_observations(rows // 2, seed=seed)})


def quiet_cpu_seconds(server: LocalServer, timeout: float = 10.0) -> float:
    """The server's CPU seconds once it has stopped working (under 5 ms of CPU in 0.2 s)."""
    deadline = time.monotonic() + timeout
    previous = server.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = server.cpu_seconds()
        if now - previous < 0.005:
            return now
        previous = now
    return previous


def ingestion_point(server: LocalServer, body: bytes, rows_per_request: int, requests: int) -> dict[str, Any]:
    """``requests`` bulk posts of ``body`` from one keep-alive client: latency, rows/s, CPU per row."""
    unscored_before = unscored_rows(server)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    latencies = []
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    for _ in range(requests):
        sent = time.perf_counter()
        connection.request(
            "POST", "/add_training_data_bulk", body=body, headers={"content-type": "application/json"}
        )
        response = connection.getresponse()
        answer = response.read()
        if response.status != 202:
            raise RuntimeError(f"/add_training_data_bulk answered {response.status}: {answer[:200]!r}")
        latencies.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - started
    cpu_used = quiet_cpu_seconds(server) - cpu_before
    connection.close()
    summary = LatencySummary.of(latencies)
    rows = rows_per_request * requests
    return {
        "requests": requests,
        "rows_per_request": rows_per_request,
        "p50_ms": summary.p50_ms,
        "p99_ms": summary.p99_ms,
        "rows_per_s": round(rows / elapsed, 1),
        "server_cpu_us_per_row": round(cpu_used / rows * 1e6, 2),
        "unscored_rows": None if unscored_before is None else (unscored_rows(server) or 0) - unscored_before,
    }


def unscored_rows(server: LocalServer) -> int | None:
    """Rows the trainer accepted but did not score (``/v1/model``'s live section; None without one)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/v1/model")
    answer = json.loads(connection.getresponse().read())
    connection.close()
    live = answer.get("live")
    return None if live is None else int(live["unscored_rows"])


def best_ingestion(
    servers: dict[str, LocalServer], *, requests: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """Each server's best round by rows/s, the servers taking turns round by round."""
    body = bulk_body(INGESTION_ROWS, seed=5)
    best: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for name, server in servers.items():
            point = ingestion_point(server, body, INGESTION_ROWS, requests)
            if name not in best or point["rows_per_s"] > best[name]["rows_per_s"]:
                best[name] = point
    return best
