"""The ``podlatency`` command as a user runs it: serve refusals, several workers, training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from podlatency.engines.predictor import cuda_usable
from podlatency.learning.workload import pod_rows


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


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_samples_file_from_the_cli_trains_a_model(tmp_path: Path, suffix: str) -> None:
    """`podlatency samples` writes a file `podlatency train --samples` takes, as the docs' first steps do."""
    samples = tmp_path / f"observed{suffix}"
    written = run_cli("samples", "--synthetic", "3000", "--out", str(samples), "--slowdown", "2")
    assert written.returncode == 0, written.stderr
    assert f"wrote 3000 samples to {samples}" in written.stdout
    trained = run_cli(
        "train", "--samples", str(samples), "--out", str(tmp_path / "models"), "--rounds", "20", timeout=300
    )
    assert trained.returncode == 0, trained.stderr
    assert "on 3000 rows" in trained.stdout
    refused = run_cli("samples", "--synthetic", "10", "--out", str(tmp_path / "observed.txt"))
    assert refused.returncode == 2
    assert "use .csv or .parquet" in refused.stderr
