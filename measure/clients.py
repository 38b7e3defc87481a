"""Keep-alive HTTP clients on loopback that time requests: one at a time, or many at once."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one measurement, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencySummary:
        """Summarise durations given in seconds."""
        values = np.asarray(seconds) * 1000.0
        return cls(
            count=len(values),
            p50_ms=round(float(np.percentile(values, 50)), 4),
            p90_ms=round(float(np.percentile(values, 90)), 4),
            p99_ms=round(float(np.percentile(values, 99)), 4),
            mean_ms=round(float(values.mean()), 4),
        )


def post_json(
    connection: http.client.HTTPConnection, body: bytes, path: str = "/v1/predict"
) -> dict[str, Any]:
    """POST ``body`` on a kept-alive connection; the decoded answer, or RuntimeError when it is not 200."""
    connection.request("POST", path, body=body, headers={"content-type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}: {payload[:200]!r}")
    answer: dict[str, Any] = json.loads(payload)
    return answer


def sequential_answers(port: int, body: bytes, requests: int) -> list[tuple[float, dict[str, Any]]]:
    """One keep-alive client, after up to 200 warm-up requests: each request's seconds and answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(min(200, requests)):
        post_json(connection, body)
    timed: list[tuple[float, dict[str, Any]]] = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = post_json(connection, body)
        timed.append((time.perf_counter() - started, answer))
    connection.close()
    return timed


def sequential(port: int, body: bytes, requests: int) -> tuple[LatencySummary, LatencySummary]:
    """One keep-alive client: end-to-end latency and the server's model-compute phases."""
    timed = sequential_answers(port, body, requests)
    return LatencySummary.of([seconds for seconds, _ in timed]), model_compute(timed)


def model_compute(timed: list[tuple[float, dict[str, Any]]]) -> LatencySummary:
    """The server's model-compute phases (``predict_ttft`` + ``predict_tpot``) of ``/v1/predict`` answers."""
    return LatencySummary.of(
        [
            (answer["timing_ms"]["predict_ttft"] + answer["timing_ms"]["predict_tpot"]) / 1000.0
            for _, answer in timed
        ]
    )


def concurrent(
    port: int, body: bytes, clients: int, seconds: float, path: str = "/v1/predict"
) -> dict[str, float]:
    """``clients`` keep-alive clients for ``seconds``: throughput and latency percentiles."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop_at = time.monotonic() + seconds
    errors: list[BaseException] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                post_json(connection, body, path)
                latencies[index].append(time.perf_counter() - started)
        except (OSError, RuntimeError) as error:
            errors.append(error)
        finally:
            connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    merged = [value for values in latencies for value in values]
    if not merged:
        raise RuntimeError(f"no request to {path} finished within {seconds} s")
    summary = LatencySummary.of(merged)
    return {"clients": clients, "rps": round(len(merged) / elapsed, 1), **asdict(summary)}
