"""Real server processes under bad callers, overload and restarts: the edges hold and nothing is lost."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from measure import seed_designs
from measure.servers import free_port
from podlatency.learning.workload import pod_rows
from tests.integration.conftest import Answer, ServerProcess

SAMPLE = pod_rows(1)[0] | {"actual_ttft_ms": 120.0, "actual_tpot_ms": 12.0}


def post(server: ServerProcess, path: str, body: dict[str, Any], token: str | None = None) -> Answer:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST")
    request.add_header("content-type", "application/json")
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())


def header(answer: Answer, name: str) -> str | None:
    return {key.lower(): value for key, value in answer.headers.items()}.get(name.lower())


def test_write_routes_need_the_bearer_token(tmp_path: Path, model_dir: Path, start_server: Any) -> None:
    """With PODLATENCY_API_TOKEN set, samples, retrain and reload need it; predictions and reads do not."""
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    settings = {"PODLATENCY_API_TOKEN": "s3cret-token", "PODLATENCY_RETRAIN_INTERVAL_S": "0"}
    server = start_server(folder, **settings)
    server.wait_for("/readyz", 200)
    writes = [
        ("/v1/samples", {"samples": [SAMPLE]}),
        ("/add_training_data_bulk", {"entries": [SAMPLE]}),
        ("/v1/retrain", {}),
        ("/reload", {}),
        ("/flush", {}),
    ]
    for path, body in writes:
        for token in (None, "wrong", "s3cret-token-but-longer"):
            refused = post(server, path, body, token)
            assert refused.status == 401, (path, token)
            assert refused.json()["error"] == "unauthorized"
            assert header(refused, "WWW-Authenticate") == 'Bearer realm="podlatency"'
    assert post(server, "/v1/samples", {"samples": [SAMPLE]}, "s3cret-token").status == 202
    assert post(server, "/add_training_data_bulk", {"entries": [SAMPLE]}, "s3cret-token").status == 202
    assert post(server, "/reload", {}, "s3cret-token").status == 200
    assert post(server, "/v1/predict", {"pods": pod_rows(3)}).status == 200
    assert server.request("GET", "/v1/models").status == 200
    assert "s3cret" not in server.log(), "the token is never logged"
    refused = post(server, "/add_training_data_bulk", {"entries": [SAMPLE]}, None)
    assert "PODLATENCY_ROUTER_SAMPLES_WITHOUT_TOKEN" in refused.json()["detail"], "the fix is named"


def test_router_samples_can_be_taken_without_the_token(
    tmp_path: Path, model_dir: Path, start_server: Any
) -> None:
    """PODLATENCY_ROUTER_SAMPLES_WITHOUT_TOKEN opens llm-d's sample route (the router sends no token)."""
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    settings = {"PODLATENCY_API_TOKEN": "s3cret-token", "PODLATENCY_ROUTER_SAMPLES_WITHOUT_TOKEN": "true"}
    server = start_server(folder, **settings)
    server.wait_for("/readyz", 200)
    assert post(server, "/add_training_data_bulk", {"entries": [SAMPLE]}, None).status == 202
    for path, body in (("/v1/samples", {"samples": [SAMPLE]}), ("/flush", {}), ("/v1/retrain", {})):
        assert post(server, path, body, None).status == 401, path


def test_oversized_bodies_are_refused_before_reading(model_dir: Path, start_server: Any) -> None:
    """A body over PODLATENCY_MAX_BODY_BYTES is a 413 naming the limit; the server keeps serving."""
    server = start_server(model_dir, PODLATENCY_MAX_BODY_BYTES="65536")
    server.wait_for("/readyz", 200)
    too_big = {"pods": pod_rows(7), "padding": "x" * 70_000}
    for path in ("/v1/predict", "/predict/bulk/strict", "/v1/samples"):
        refused = post(server, path, too_big)
        assert refused.status == 413, path
        assert refused.json()["error"] == "body_too_large"
        assert "65536 bytes (PODLATENCY_MAX_BODY_BYTES)" in refused.json()["detail"]
    assert post(server, "/v1/predict", {"pods": pod_rows(7)}).status == 200


def test_overload_is_shed_at_once_with_retry_after(model_dir: Path, start_server: Any) -> None:
    """Beyond PODLATENCY_MAX_IN_FLIGHT prediction requests, the rest get 503 overloaded and Retry-After.

    Nothing else goes wrong: every request is either answered or shed, shed ones are counted, and
    routes other than predictions are not limited.
    """
    server = start_server(model_dir, PODLATENCY_MAX_IN_FLIGHT="2", PODLATENCY_BATCHING="false")
    server.wait_for("/readyz", 200)
    body = {"pods": pod_rows(1024, seed=3)}

    def call(_: int) -> Answer:
        return post(server, "/v1/predict", body)

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(call, range(240)))
    statuses = {answer.status for answer in answers}
    assert statuses <= {200, 503}, statuses
    shed = [answer for answer in answers if answer.status == 503]
    assert shed, "24 concurrent clients never exceeded 2 requests in flight"
    assert all(answer.json()["error"] == "overloaded" for answer in shed)
    assert all(header(answer, "Retry-After") == "1" for answer in shed)
    assert len(shed) < len(answers)
    metrics = server.request("GET", "/metrics").body.decode()
    counted = next(line for line in metrics.splitlines() if line.startswith("podlatency_requests_shed_total"))
    assert float(counted.split()[-1]) == len(shed)
    assert server.request("GET", "/readyz").status == 200


class RetryingClient:
    """A router's view of two replicas: round robin, and the other replica on a refused connection or 503."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.servers = servers
        self.answered = 0
        self.failed: list[str] = []
        self._next = 0
        self._lock = threading.Lock()

    def call(self, body: bytes) -> None:
        with self._lock:
            first = self._next
            self._next += 1
        errors = []
        for attempt in range(6):
            server = self.servers[(first + attempt) % len(self.servers)]
            request = urllib.request.Request(server.url + "/v1/predict", data=body, method="POST")
            request.add_header("content-type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    predictions = json.loads(response.read())["predictions"]
                    assert len(predictions) == 7
                    with self._lock:
                        self.answered += 1
                    return
            except urllib.error.HTTPError as error:
                errors.append(f"HTTP {error.code}")
                if error.code != 503:
                    break
            except (ConnectionError, urllib.error.URLError) as error:
                errors.append(str(error))  # predictions are idempotent: retried on the other replica
                time.sleep(0.05)
        with self._lock:
            self.failed.append("; ".join(errors))


def test_a_rolling_restart_under_load_fails_no_request(tmp_path: Path, model_dir: Path) -> None:
    """Two replicas behind a retrying client; each in turn gets SIGTERM and is started again.

    SIGTERM stops accepting connections and finishes the requests in flight, so no request that
    reached a server fails, and the client's retries to the other replica cover the rest.
    """
    servers = [ServerProcess(model_dir) for _ in range(2)]
    for server in servers:
        server.launch(tmp_path)
    client = RetryingClient(servers)
    body = json.dumps({"pods": pod_rows(7, seed=4)}).encode()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            client.call(body)

    workers = [threading.Thread(target=load) for _ in range(8)]
    for worker in workers:
        worker.start()
    try:
        for server in servers:
            time.sleep(1.0)
            before = client.answered
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            # uvicorn shuts down cleanly, then re-raises the signal: the exit status is SIGTERM's.
            assert server.process.wait(timeout=20) in (0, -signal.SIGTERM), server.log()
            assert "Application shutdown complete" in server.log()
            server.port = free_port()  # a new pod gets a new address
            server.launch(tmp_path)
            assert client.answered > before
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(15)
        for server in servers:
            server.stop()
    assert client.failed == []
    assert client.answered > 200


def in_flight(server: ServerProcess) -> float:
    metrics = server.request("GET", "/metrics").body.decode()
    line = next(line for line in metrics.splitlines() if line.startswith("podlatency_requests_in_flight "))
    return float(line.split()[-1])


def test_sigterm_finishes_in_flight_requests_and_flushes_spans(
    tmp_path: Path, model_dir: Path, otlp_receiver: Any
) -> None:
    """Requests in flight when SIGTERM arrives are answered, and their spans reach the collector."""
    server = ServerProcess(
        model_dir,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "60000",  # nothing is exported before shutdown flushes it
            "PODLATENCY_BATCHING": "false",
        }
        | seed_designs.serving_env(),  # the seed's per-row design keeps requests in flight
    ).launch(tmp_path)
    server.wait_for("/readyz", 200)
    body = {"pods": pod_rows(128, seed=9)}  # the seed's per-row design: slow enough to stay in flight
    with ThreadPoolExecutor(max_workers=8) as pool:
        pending = [pool.submit(post, server, "/seed/to-thread", body) for _ in range(8)]
        deadline = time.monotonic() + 10
        while in_flight(server) < 8:
            assert time.monotonic() < deadline, "the 8 requests were never in flight together"
            time.sleep(0.01)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        answers = [future.result(timeout=30) for future in pending]
    assert server.process.wait(timeout=20) in (0, -signal.SIGTERM)
    assert [answer.status for answer in answers] == [200] * 8
    assert "Waiting for connections to close" in server.log() or "Shutting down" in server.log()
    traces = {span.trace_id for span in otlp_receiver.snapshot()}
    assert len(traces) == 8, "every request's spans were flushed at shutdown"


@pytest.mark.slow
def test_overload_report_shows_shedding_keeps_latency(tmp_path: Path) -> None:
    """`python -m measure.loadtest.overload`: 8x the capacity's users; shedding keeps answered p99 down."""
    out = tmp_path / "overload"
    command = [sys.executable, "-m", "measure.loadtest.overload", "--seconds", "8", "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    runs = {run["label"]: run for run in json.loads((out / "results.json").read_text())}
    unbounded, shedding = runs["overload-unbounded"], runs["overload-shedding"]
    assert shedding["shed"]["requests"] > 0
    assert shedding["accepted"]["p99_ms"] < unbounded["accepted"]["p99_ms"] / 2


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_at_steady_load_has_no_errors_and_flat_memory(tmp_path: Path, model_dir: Path) -> None:
    """Locust at steady load for 10 minutes (PODLATENCY_SOAK_SECONDS): no failure, resident memory flat.

    Memory is read after a one-minute warm-up (allocator pools and caches filled) and at the end.
    """
    seconds = int(os.environ.get("PODLATENCY_SOAK_SECONDS", "600"))
    server = ServerProcess(model_dir, env={"PODLATENCY_LOG_LEVEL": "warning"}).launch(tmp_path)
    assert server.process is not None
    server.wait_for("/readyz", 200)
    locustfile = Path(__file__).resolve().parents[2] / "measure" / "loadtest" / "locustfile.py"
    command = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--users", "16",
        "--spawn-rate", "16", "--run-time", f"{seconds}s", "--host", server.url,
        "--csv", str(tmp_path / "soak"), "--only-summary", "--loglevel", "ERROR", "V1PredictUser",
    ]  # fmt: skip
    log = tmp_path / "locust.log"
    try:
        with log.open("wb") as output:
            locust = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
            time.sleep(min(60, seconds / 5))
            start_mb = server.rss_mb()
            assert locust.wait(timeout=seconds + 120) == 0, log.read_text()[-3000:]
        end_mb = server.rss_mb()
    finally:
        server.stop()
    with (tmp_path / "soak_stats.csv").open() as handle:
        [total] = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    print(
        f"soak: {seconds} s, {requests} requests ({float(total['Requests/s']):.0f}/s, "
        f"p99 {total['99%']} ms), {failures} failures, RSS {start_mb:.1f} -> {end_mb:.1f} MB"
    )
    assert failures == 0
    assert requests > seconds * 100
    assert end_mb < start_mb * 1.05 + 5, (start_mb, end_mb)
