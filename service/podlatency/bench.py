"""``podlatency bench``: serving latency, model compute and memory of a real server, in one run.

What it measures, all on this machine in one run so the figures compare:

1. end-to-end latency of a 7-pod ``/v1/predict`` from one keep-alive client (p50, p90, p99);
2. the server's own model compute for those requests (its ``predict ttft`` + ``predict tpot`` phases)
   against raw ``inplace_predict`` of the same matrix in this process: the ratio shows what serving adds
   around the model call;
3. resident memory of the serving process, and of a bare process that only imports Litestar,
   uvicorn and XGBoost, for scale;
4. XGBoost ``nthread`` = 1 versus all cores under concurrent clients (throughput and p99);
5. a concurrency sweep (1, 8, 32, 128 clients): ``/v1/predict`` with and without the micro-batcher, the
   baselines' batch design and the seed post's original ``to-thread`` design, interleaved at each
   level, best of two rounds per point;
6. a soak at 32 clients (2 minutes by default): resident memory at its start and end.

The server runs with the embedded default model, on the CPU, with no trace exporter, and with the
baselines on (``PODLATENCY_VARIANTS``; they load pandas) except for one memory reading without them.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from podlatency.predictor import Predictor
from podlatency.registry import ModelRegistry
from podlatency.schema import PodMetrics, feature_matrix
from podlatency.settings import Settings
from podlatency.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.workload import pod_rows

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def die_with_parent() -> None:
    """``preexec_fn`` for servers a benchmark starts: SIGTERM them if the benchmark itself dies.

    Without it a benchmark killed from outside (a CI timeout, Ctrl-\\) leaves its servers running.
    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere it does nothing.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until the server on ``port`` answers ``/readyz`` with 200; fail if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


class BenchServer:
    """A ``podlatency serve`` subprocess on a free loopback port."""

    def __init__(
        self, model_dir: Path, nthread: int, *, variants: bool = True, batching: bool = True
    ) -> None:
        self.port = free_port()
        env = os.environ | {
            "PODLATENCY_MODEL_DIR": str(model_dir),
            "PODLATENCY_DEVICE": "cpu",
            "PODLATENCY_NTHREAD": str(nthread),
            "PODLATENCY_LOG_LEVEL": "warning",
            "PODLATENCY_VARIANTS": "true" if variants else "false",
            "PODLATENCY_BATCHING": "true" if batching else "false",
            # The sweep measures how each design copes with up to 128 clients, so nothing is shed
            # (shedding is measured on its own: python -m loadtest.overload).
            "PODLATENCY_MAX_IN_FLIGHT": "0",
        }
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
        self.process = subprocess.Popen(  # noqa: S603  (our own CLI, fixed arguments)
            [sys.executable, "-m", "podlatency", "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509  (started before any client thread)
        )
        wait_ready(self.port, self.process)

    def rss_mb(self) -> float:
        """Resident set size of the server process."""
        return _rss_mb(self.process.pid)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """Terminate and reap."""
        self.process.terminate()
        self.process.wait(timeout=15)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far (Linux ``/proc``)."""
    # Fields 14 and 15 of /proc/PID/stat, counted after the parenthesised command name.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _post(connection: http.client.HTTPConnection, body: bytes, path: str = "/v1/predict") -> dict[str, Any]:
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
        _post(connection, body)
    timed: list[tuple[float, dict[str, Any]]] = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = _post(connection, body)
        timed.append((time.perf_counter() - started, answer))
    connection.close()
    return timed


def sequential(port: int, body: bytes, requests: int) -> tuple[LatencySummary, LatencySummary]:
    """One keep-alive client: end-to-end latency and the server's model-compute phases."""
    timed = sequential_answers(port, body, requests)
    model_compute = [
        (answer["timing_ms"]["predict ttft"] + answer["timing_ms"]["predict tpot"]) / 1000.0
        for _, answer in timed
    ]
    return LatencySummary.of([seconds for seconds, _ in timed]), LatencySummary.of(model_compute)


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
                _post(connection, body, path)
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


def raw_inplace_predict(model_dir: Path, rows: list[PodMetrics], repeats: int = 3000) -> LatencySummary:
    """Both targets' ``inplace_predict`` on the request's matrix, in this process, nthread=1."""
    bundle = ModelRegistry(model_dir).load_active()
    assert bundle is not None  # noqa: S101  (trained just before)
    predictor = Predictor(bundle, "cpu", nthread=1)
    matrix = feature_matrix(rows)
    for _ in range(200):
        predictor.predict_all(matrix)
    durations: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        for target in predictor.targets:
            predictor.predict_target(target, matrix)
        durations.append(time.perf_counter() - started)
    return LatencySummary.of(durations)


def bare_process_rss_mb() -> float:
    """RSS of a process that imports only Litestar, uvicorn and XGBoost (for scale)."""
    code = (
        "import litestar, uvicorn, xgboost, numpy, pathlib;"
        "status = pathlib.Path('/proc/self/status').read_text().splitlines();"
        "print([line for line in status if line.startswith('VmRSS')][0])"
    )
    command = [sys.executable, "-c", code]
    output = subprocess.run(command, capture_output=True, text=True, check=True)  # noqa: S603
    return round(int(output.stdout.split()[1]) / 1024, 1)


SWEEP_ENDPOINTS = (
    ("v1 batching", "batching", "/v1/predict"),
    ("v1 no batching", "no-batching", "/v1/predict"),
    ("baseline batch", "batching", "/variants/batch"),
    ("baseline to-thread", "batching", "/variants/to-thread"),
)


def sweep(
    servers: dict[str, BenchServer], body: bytes, levels: list[int], seconds: float, rounds: int = 2
) -> dict[str, dict[str, Any]]:
    """Every sweep endpoint at every concurrency level: req/s, p50, p99, and server CPU per request.

    The endpoints are measured one after the other at each level, in ``rounds`` interleaved rounds, and
    each point keeps its best round (by throughput): on a shared machine noise comes in bursts of
    seconds, so the figures that are compared are measured seconds apart, and a burst that hits one
    round of one endpoint does not decide the comparison.
    """
    results: dict[str, dict[str, Any]] = {name: {} for name, _, _ in SWEEP_ENDPOINTS}
    for clients in levels:
        for _ in range(rounds):
            for name, server, path in SWEEP_ENDPOINTS:
                cpu_before = servers[server].cpu_seconds()
                figures = concurrent(servers[server].port, body, clients, seconds, path)
                cpu_used = servers[server].cpu_seconds() - cpu_before
                point = {key: figures[key] for key in ("rps", "p50_ms", "p99_ms", "count")}
                point["server_cpu_us_per_request"] = round(cpu_used / figures["count"] * 1e6, 1)
                best = results[name].get(str(clients))
                if best is None or point["rps"] > best["rps"]:
                    results[name][str(clients)] = point
        for name, _, _ in SWEEP_ENDPOINTS:
            point = results[name][str(clients)]
            print(
                f"  {name:15s} {clients:4d} clients: {point['rps']:8.1f} req/s  "
                f"p50 {point['p50_ms']:8.2f} ms  p99 {point['p99_ms']:8.2f} ms  "
                f"server CPU {point['server_cpu_us_per_request']:7.0f} us/request",
                flush=True,
            )
    return results


def soak(server: BenchServer, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` for ``seconds``: resident memory at the start and the end, and the throughput."""
    concurrent(server.port, body, clients, min(2.0, seconds))
    rss_start = server.rss_mb()
    figures = concurrent(server.port, body, clients, seconds)
    return {"clients": clients, "seconds": seconds, "rss_start_mb": rss_start, "rss_end_mb": server.rss_mb(),
            "rps": figures["rps"], "p99_ms": figures["p99_ms"]}  # fmt: skip


def sweep_and_soak(
    model_dir: Path,
    body: bytes,
    levels: list[int],
    sweep_seconds: float,
    soak_seconds: float,
    *,
    sweep_rounds: int = 2,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """The concurrency sweep on a batching and a non-batching server, then the soak on the first."""
    batching_server = BenchServer(model_dir, nthread=1)
    plain_server = BenchServer(model_dir, nthread=1, batching=False)
    try:
        servers = {"batching": batching_server, "no-batching": plain_server}
        sweep_results = sweep(servers, body, levels, sweep_seconds, sweep_rounds)
    finally:
        plain_server.stop()
    try:
        soak_results = soak(batching_server, body, 32, soak_seconds) if soak_seconds > 0 else {}
    finally:
        batching_server.stop()
    return sweep_results, soak_results


def run_benchmark(
    requests: int,
    pods: int,
    concurrency: int,
    concurrent_seconds: float,
    out: Path,
    *,
    levels: list[int],
    sweep_seconds: float,
    soak_seconds: float,
    sweep_rounds: int = 2,
) -> int:
    """Run every measurement, print a summary, write ``results.json``; 0 when all targets are met."""
    rows_json = pod_rows(pods, seed=7)
    body = json.dumps({"pods": rows_json}).encode()
    rows = [msgspec.convert(row, PodMetrics) for row in rows_json]
    defaults = Settings()
    with tempfile.TemporaryDirectory(prefix="podlatency-bench-") as folder:
        model_dir = Path(folder)
        bundle = train_bundle(
            synthetic_training_set(defaults.default_samples), TrainingOptions(), source="synthetic-default"
        )
        ModelRegistry(model_dir).save(bundle)
        print(f"model {bundle.version}: {pods}-pod requests, {requests} sequential, {concurrency} concurrent")

        server = BenchServer(model_dir, nthread=1)
        try:
            end_to_end, served_compute = sequential(server.port, body, requests)
            rss_after = server.rss_mb()
            nthread_one = concurrent(server.port, body, concurrency, concurrent_seconds)
        finally:
            server.stop()
        raw = raw_inplace_predict(model_dir, rows)

        server = BenchServer(model_dir, nthread=0)
        try:
            sequential(server.port, body, 300)
            nthread_all = concurrent(server.port, body, concurrency, concurrent_seconds)
        finally:
            server.stop()

        server = BenchServer(model_dir, nthread=1, variants=False)
        try:
            sequential(server.port, body, 300)
            rss_without_variants = server.rss_mb()
        finally:
            server.stop()

        print(f"concurrency sweep, best of {sweep_rounds} interleaved rounds of {sweep_seconds:g} s:")
        sweep_results, soak_results = sweep_and_soak(
            model_dir, body, levels, sweep_seconds, soak_seconds, sweep_rounds=sweep_rounds
        )
    bare_rss = bare_process_rss_mb()

    compute_ratio = served_compute.p50_ms / raw.p50_ms
    targets = {
        "end_to_end_p50_ms<=1.5": end_to_end.p50_ms <= 1.5,
        "served_compute_within_1.5x_raw": compute_ratio <= 1.5,
        "server_rss_mb<=250": rss_after <= 250,
    }
    targets |= batching_targets(sweep_results)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "model_version": bundle.version,
        "pods_per_request": pods,
        "end_to_end": asdict(end_to_end),
        "served_model_compute": asdict(served_compute),
        "raw_inplace_predict": asdict(raw),
        "served_compute_over_raw_p50": round(compute_ratio, 3),
        "server_rss_mb": rss_after,
        "server_rss_mb_without_variants": rss_without_variants,
        "bare_litestar_xgboost_rss_mb": bare_rss,
        "concurrent": {"nthread_1": nthread_one, "nthread_all": nthread_all},
        "sweep_seconds_per_round": sweep_seconds,
        "sweep_rounds": sweep_rounds,
        "sweep": sweep_results,
        "soak_32_clients": soak_results,
        "targets": targets,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _print_summary(results)
    print(f"wrote {out / 'results.json'}")
    return 0 if all(targets.values()) else 1


def batching_targets(sweep_results: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """The throughput issue's targets, where the sweep measured the levels they name."""
    batched, plain, to_thread = (
        sweep_results[name] for name in ("v1 batching", "v1 no batching", "baseline to-thread")
    )
    targets: dict[str, bool] = {}
    if "1" in batched:
        targets["1_client_p50_ms<=1.0"] = batched["1"]["p50_ms"] <= 1.0
    if "32" in batched:
        targets["32_clients_batching_rps>=2x_no_batching"] = batched["32"]["rps"] >= 2 * plain["32"]["rps"]
        targets["32_clients_batching_p99_ms<=20"] = batched["32"]["p99_ms"] <= 20
        targets["32_clients_rps>=50x_to_thread"] = batched["32"]["rps"] >= 50 * to_thread["32"]["rps"]
    return targets


def _print_summary(results: dict[str, Any]) -> None:
    e2e, served, raw = results["end_to_end"], results["served_model_compute"], results["raw_inplace_predict"]
    one, every = results["concurrent"]["nthread_1"], results["concurrent"]["nthread_all"]
    ratio = results["served_compute_over_raw_p50"]
    lines = [
        f"end to end, 1 client:      p50 {e2e['p50_ms']:.3f} ms  p90 {e2e['p90_ms']:.3f}  "
        f"p99 {e2e['p99_ms']:.3f}",
        f"model compute in server:   p50 {served['p50_ms']:.3f} ms",
        f"raw inplace_predict x2:    p50 {raw['p50_ms']:.3f} ms  (served/raw = {ratio})",
        f"server RSS: {results['server_rss_mb']} MB, {results['server_rss_mb_without_variants']} MB with "
        "PODLATENCY_VARIANTS=false",
        f"bare Litestar + XGBoost process RSS: {results['bare_litestar_xgboost_rss_mb']} MB",
    ]
    for label, row in (("nthread=1  ", one), ("nthread=all", every)):
        lines.append(
            f"{row['clients']} clients, {label}: {row['rps']} req/s  p50 {row['p50_ms']:.2f} ms  "
            f"p99 {row['p99_ms']:.2f}"
        )
    soak_figures = results["soak_32_clients"]
    if soak_figures:
        lines.append(
            f"soak, 32 clients for {soak_figures['seconds']:g} s: RSS {soak_figures['rss_start_mb']} MB -> "
            f"{soak_figures['rss_end_mb']} MB, {soak_figures['rps']} req/s, "
            f"p99 {soak_figures['p99_ms']:.2f} ms"
        )
    lines += [f"target {name}: {'met' if met else 'MISSED'}" for name, met in results["targets"].items()]
    print("\n".join(lines))
    sys.stdout.flush()
