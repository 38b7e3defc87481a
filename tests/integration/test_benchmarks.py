"""The benchmarks (``measure/``) run as a user runs them, against real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from measure.versus_revision import same_predictions
from podlatency.engines.predictor import cuda_usable

REPOSITORY = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the repository root, as ``make bench`` runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ,
        cwd=REPOSITORY,
        check=False,
    )


@pytest.mark.slow
def test_bench_writes_its_results(tmp_path: Path) -> None:
    """A short benchmark run measures real servers, the naive one among them, and writes every figure."""
    result = run_module(
        "measure.bench", "--requests", "100", "--concurrent-seconds", "0.5",
        "--levels", "1,4", "--sweep-seconds", "0.5", "--soak-seconds", "1", "--out", str(tmp_path),
        timeout=300,
    )  # fmt: skip
    # Exit status 1 means a target was missed (a loaded machine); the figures are still measured.
    assert result.returncode in {0, 1}, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    head = results["head_to_head"]
    assert set(head) == {"naive", "podlatency xgboost", "podlatency compiled"}
    for name, figures in head.items():
        assert figures["one_client"]["count"] == 100, name
        assert figures["concurrent"]["rps"] > 0, name
    assert head["podlatency compiled"]["served_model_compute"]["p50_ms"] > 0
    assert "served_model_compute" not in head["naive"], "the naive server times no phases"
    assert results["ingestion"]["rows_per_request"] == 10_000
    assert results["ingestion"]["rows_per_s"] > 0
    assert results["raw_predict"]["compiled"]["p50_ms"] > 0
    assert results["raw_predict"]["xgboost"]["p50_ms"] > 0
    assert results["server_rss_mb"] > results["server_rss_mb_without_seed_designs"] > 0
    assert results["server_rss_mb"] > results["bare_litestar_xgboost_rss_mb"] > 0
    assert "x naive" in result.stdout
    assert {"1_client_p50<=0.6x_naive", "16_clients_rps>=3x_naive"} <= set(results["targets"])
    floor = results["versus_floor"]
    assert set(floor) == {"/v1/predict", "/predict/bulk/strict"}
    for path, figures in floor.items():
        assert figures["floor"]["one_client"]["p50_ms"] > 0, path
        assert figures["podlatency"]["over_floor"]["concurrent_cpu_per_request"] > 0, path
    assert "/predict/bulk/strict_16_clients_cpu_per_request<=2x_floor" in results["targets"]
    assert "the floor" in result.stdout
    assert set(results["sweep"]) == {"v1 batching", "v1 no batching", "seed batch", "seed to-thread"}
    assert results["sweep"]["v1 batching"]["4"]["rps"] > 0
    assert results["soak_32_clients"]["rss_end_mb"] > 0
    tracing = results["tracing"]
    assert set(tracing) == {"off", "defaults", "every request"}
    assert all(tracing[name]["concurrent"]["rps"] > 0 for name in tracing)
    every = tracing["every request"]
    assert sum(every["kept_traces"].values()) == every["requests"], "every request's trace arrived"
    assert every["kept_traces"]["sampled"] > every["kept_traces"].get("slow", 0)
    assert sum(tracing["defaults"]["kept_traces"].values()) < tracing["defaults"]["requests"]
    assert "16_clients_tracing_defaults_rps>=0.9x_off" in results["targets"]
    quantiles = results["quantiles"]
    asked = quantiles["contenders"]["set, all four quantiles"]
    assert asked["one_client"]["count"] == 100
    assert asked["served_model_compute"]["p50_ms"] > 0
    assert "served_model_compute" not in quantiles["contenders"]["naive, set"]
    assert set(quantiles["targets"]) <= set(results["targets"])
    assert "quantiles_all_four_compute<=1.5x_single" in results["targets"]


@pytest.mark.skipif(cuda_usable(), reason="a GPU is present: the benchmark would run for real")
def test_gpu_bench_without_gpu_says_so(tmp_path: Path) -> None:
    """The GPU benchmark on a machine without a GPU exits 2 with a plain message and writes nothing."""
    result = run_module("measure.gpu_bench", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "no usable GPU" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_usable(), reason="no usable NVIDIA GPU on this machine")
def test_gpu_bench_measures_the_crossover(tmp_path: Path) -> None:
    """On a GPU, the GPU benchmark times every batch size on CPU and GPU and writes the crossover."""
    result = run_module("measure.gpu_bench", "--out", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "gpu-results.json").read_text())
    assert set(results["median_ms_both_targets"]) == {"1", "7", "64", "512", "4096"}


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux-only")
def test_killed_bench_takes_its_server_down(tmp_path: Path) -> None:
    """When the benchmark is killed outright, the server it started goes down too."""
    bench = subprocess.Popen(
        [sys.executable, "-m", "measure.bench", "--requests", "100000", "--out", str(tmp_path)],
        cwd=REPOSITORY,
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


def test_versus_revision_holds_predictions_to_float32_tolerance() -> None:
    """Engines summing the same leaves in another order agree; a model that predicts otherwise does not."""
    assert same_predictions([(100.0, 20.0)], [(100.0005, 20.0)])
    assert not same_predictions([(100.0, 20.0)], [(100.01, 20.0)])
    assert not same_predictions([(100.0, 20.0)], [])


def test_versus_revision_refuses_an_unknown_revision_by_name() -> None:
    """``--rev`` naming no commit is a usage error that names it, before any server starts."""
    run = run_module("measure.versus_revision", "--rev", "no-such-revision-here", timeout=60)
    assert run.returncode == 2
    assert "--rev no-such-revision-here: not a revision of this repository" in run.stderr


@pytest.mark.slow
def test_versus_revision_serves_both_and_compares_like_with_like(tmp_path: Path) -> None:
    """Against HEAD's own package: two real servers, the same predictions, ratios for every figure."""
    run = run_module(
        "measure.versus_revision", "--rev", "HEAD", "--rounds", "1", "--seconds", "1", "--requests", "100",
        "--bulk-requests", "1", "--out", str(tmp_path), timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "versus-revision.json").read_text())
    assert report["same_predictions"] is True
    assert len(report["commit"]) == 40
    for name in ("revision", "working tree"):
        figures = report["results"][name]
        assert figures["one_client"]["p50_ms"] > 0
        assert figures["concurrent"]["rps"] > 0
        assert figures["concurrent"]["server_cpu_us_per_request"] > 0
        assert figures["traced"]["rps"] > 0
        assert figures["ingestion"]["rows_per_request"] == 10_000
        assert figures["ingestion"]["rows_per_s"] > 0
    assert set(report["working_tree_over_revision"]) == {
        "one_client_p50", "one_client_cpu_per_request", "concurrent_rps", "concurrent_p99",
        "concurrent_cpu_per_request", "traced_rps", "traced_cpu_per_request", "ingestion_rows_per_s",
        "ingestion_p50", "ingestion_cpu_per_row",
    }  # fmt: skip


@pytest.mark.slow
def test_request_cost_takes_each_piece_away(tmp_path: Path) -> None:
    """Each piece's cost comes from a real server without it: the floors, no metrics, a small model."""
    result = run_module(
        "measure.request_cost", "--requests", "200", "--seconds", "0.5", "--rounds", "1",
        "--out", str(tmp_path), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "request-cost.json").read_text())
    servers = results["servers"]
    assert len(servers) == 5
    assert all(figures["16_clients_cpu_us_per_request"] > 0 for figures in servers.values())
    # Observations are no-ops in the server without metrics: its phase histograms stay empty.
    assert {"dispatch", "predict_ttft", "encode", "respond"} <= set(results["phases_at_one_client_us"])
    assert "Prometheus metrics" in results["pieces"]
