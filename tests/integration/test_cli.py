"""The ``podlatency`` command as a user runs it: serve refusals, several workers, and the benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from podlatency.predictor import cuda_usable
from podlatency.workload import pod_rows


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podlatency", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | (env or {}),
        check=False,
    )


@pytest.mark.skipif(cuda_usable(), reason="a GPU is present, so cuda is a valid choice here")
def test_serve_refuses_cuda_without_gpu() -> None:
    """`serve --device cuda` on a machine without a GPU exits at once with a clear message."""
    result = run_cli("serve", "--device", "cuda", "--port", "1")
    assert result.returncode == 2
    assert "no usable GPU" in result.stderr


def test_serve_refuses_bad_settings() -> None:
    """A bad PODLATENCY_* value stops `serve` before it binds, naming the variable."""
    result = run_cli("serve", env={"PODLATENCY_MAX_PODS": "zero"})
    assert result.returncode == 2
    assert "PODLATENCY_MAX_PODS" in result.stderr


def test_two_workers_share_one_trained_default(tmp_path: Path, start_server: Any) -> None:
    """Two workers on an empty folder serve the same default, trained once before they start."""
    server = start_server(tmp_path / "models", PODLATENCY_WORKERS="2", PODLATENCY_DEFAULT_SAMPLES="5000")
    version = server.wait_for("/readyz", 200).json()["model_version"]
    assert server.log().count("training the embedded default") == 1, "trained once, before the workers"
    for _ in range(20):
        answer = server.request("POST", "/v1/predict", {"pods": pod_rows(3)})
        assert answer.status == 200
        assert answer.json()["model_version"] == version


def test_bench_writes_its_results(tmp_path: Path) -> None:
    """A short `podlatency bench` run measures a real server and writes every figure to results.json."""
    result = run_cli(
        "bench", "--requests", "100", "--concurrency", "2", "--concurrent-seconds", "0.5",
        "--levels", "1,4", "--sweep-seconds", "0.5", "--soak-seconds", "1", "--out", str(tmp_path),
    )  # fmt: skip
    # Exit status 1 means a target was missed (a loaded machine); the figures are still measured.
    assert result.returncode in {0, 1}, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["end_to_end"]["count"] == 100
    assert results["raw_inplace_predict"]["p50_ms"] > 0
    assert results["server_rss_mb"] > results["server_rss_mb_without_variants"] > 0
    assert results["server_rss_mb"] > results["bare_litestar_xgboost_rss_mb"] > 0
    assert set(results["concurrent"]) == {"nthread_1", "nthread_all"}
    assert "end to end, 1 client" in result.stdout
    assert set(results["sweep"]) == {"v1 batching", "v1 no batching", "baseline batch", "baseline to-thread"}
    assert results["sweep"]["v1 batching"]["4"]["rps"] > 0
    assert results["soak_32_clients"]["rss_end_mb"] > 0


@pytest.mark.skipif(cuda_usable(), reason="a GPU is present: the benchmark would run for real")
def test_gpu_bench_without_gpu_says_so(tmp_path: Path) -> None:
    """`podlatency gpu-bench` on a machine without a GPU exits 2 with a plain message and writes nothing."""
    result = run_cli("gpu-bench", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "no usable GPU" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_usable(), reason="no usable NVIDIA GPU on this machine")
def test_gpu_bench_measures_the_crossover(tmp_path: Path) -> None:
    """On a GPU, `podlatency gpu-bench` times every batch size on CPU and GPU and writes the crossover."""
    result = run_cli("gpu-bench", "--out", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "gpu-results.json").read_text())
    assert set(results["median_ms_both_targets"]) == {"1", "7", "64", "512", "4096"}


def test_two_workers_report_metrics_together(tmp_path: Path, model_dir: Path, start_server: Any) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, /metrics adds up both workers' samples and names the active model."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    server = start_server(model_dir, PODLATENCY_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    version = server.wait_for("/readyz", 200).json()["model_version"]
    for _ in range(30):
        assert server.request("POST", "/v1/predict", {"pods": pod_rows(2)}).status == 200
    text = server.request("GET", "/metrics").body.decode()
    assert "podlatency_requests_per_batch_count 30.0" in text
    assert f'podlatency_active_model_info{{device="cpu",objective="mean",version="{version}"}} 1.0' in text


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux-only")
def test_killed_bench_takes_its_server_down(tmp_path: Path) -> None:
    """When `podlatency bench` is killed outright, the server it started goes down too."""
    bench = subprocess.Popen(
        [sys.executable, "-m", "podlatency", "bench", "--requests", "100000", "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (servers := _children(bench.pid)):
            assert time.monotonic() < deadline, "the bench never started a server"
            time.sleep(0.2)
        time.sleep(2)  # let the server get going
        bench.kill()
        bench.wait()
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in servers):
            assert time.monotonic() < deadline, "the server outlived its benchmark"
            time.sleep(0.2)
    finally:
        if bench.poll() is None:
            bench.kill()


def _state(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return "gone"
    return next(line for line in status.splitlines() if line.startswith("State:"))
