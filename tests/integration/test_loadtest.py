"""Real Locust runs against a real server: the comparison runner end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from measure.loadtest.endpoints import ENDPOINTS
from measure.loadtest.report import PHASE_ORDER
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]


def compare(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "measure.loadtest.compare", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@pytest.mark.slow
def test_short_comparison_of_every_endpoint(tmp_path: Path) -> None:
    """A few seconds of real Locust per endpoint: all get requests, none fail, and the report parses."""
    result = compare("--users", "4", "--duration", "2", "--warmup", "1", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "results.json").read_text())
    by_name = {endpoint["name"]: endpoint for endpoint in summary["endpoints"]}
    assert set(by_name) == {endpoint.name for endpoint in ENDPOINTS}
    for name, endpoint in by_name.items():
        assert endpoint["requests"] > 0, name
        assert endpoint["failures"] == 0, name
        assert endpoint["rps"] > 0, name
        # Percentiles and max come from the same exact response times (the locustfile writes them).
        assert 0 < endpoint["p50_ms"] <= endpoint["p95_ms"] <= endpoint["p99_ms"] <= endpoint["max_ms"], name
        assert "dispatch" in endpoint["server_phase_mean_ms"], name
    assert "queue_wait" in by_name["to-thread"]["server_phase_mean_ms"]
    assert "predict_ttft" in by_name["v1-predict"]["server_phase_mean_ms"]
    report = (tmp_path / "report.md").read_text()
    for endpoint in ENDPOINTS:
        assert f"`{endpoint.path}`" in report
    v1_row = next(line for line in report.splitlines() if line.startswith("| `/v1/predict` | ours"))
    p50_cell = v1_row.split(" | ")[3]
    assert "." in p50_cell, "a sub-10-ms endpoint's latency in fractional milliseconds"
    header = next(line for line in report.splitlines() if line.startswith("| endpoint | dispatch"))
    columns = header.strip("| ").split(" | ")[1:]
    request_order = [phase for phase in PHASE_ORDER if phase in columns]
    assert columns[: len(request_order)] == request_order, "phase columns in request order"
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")
    assert "[6/6] llmd-bulk-strict" in result.stdout


def test_wrong_answers_fail_the_run(tmp_path: Path, model_dir: Path, start_server: Any) -> None:
    """Answers Locust rejects (here 413: more pods than the server takes) count as failures and exit 1."""
    server = start_server(model_dir, PODLATENCY_MAX_PODS="3")
    server.wait_for("/readyz", 200)
    result = compare(
        "--host", server.url, "--endpoints", "v1-predict", "--users", "2",
        "--duration", "1", "--warmup", "0.5", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1
    assert "failure ratio above" in result.stderr
    endpoint = json.loads((tmp_path / "results.json").read_text())["endpoints"][0]
    assert endpoint["requests"] > 0
    assert endpoint["failures"] == endpoint["requests"]


def test_remote_hosts_are_refused(tmp_path: Path) -> None:
    """The runner only sends load to loopback addresses."""
    result = compare("--host", "http://10.0.0.1:8000", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "loopback" in result.stderr


@pytest.mark.slow
def test_full_comparison(tmp_path: Path) -> None:
    """The default comparison (32 users, 20 s each) runs clean; ours out-serves the seed's original."""
    result = compare("--out", str(tmp_path), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    by_name = {e["name"]: e for e in json.loads((tmp_path / "results.json").read_text())["endpoints"]}
    assert by_name["v1-predict"]["rps"] > 5 * by_name["to-thread"]["rps"]


@pytest.mark.slow
def test_distributed_mode(tmp_path: Path) -> None:
    """With --processes 2 Locust runs master and workers, and their requests are counted together."""
    result = compare(
        "--endpoints", "v1-predict", "--users", "4", "--duration", "2", "--warmup", "1",
        "--processes", "2", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    endpoint = json.loads((tmp_path / "results.json").read_text())["endpoints"][0]
    assert endpoint["requests"] > 0
    assert endpoint["failures"] == 0
    assert "2 Locust process(es)" in (tmp_path / "report.md").read_text()


def test_a_model_swap_under_load_fails_no_request(tmp_path: Path, model_dir: Path, start_server: Any) -> None:
    """While Locust drives /v1/predict a new version is activated: it is swapped in, no request fails."""
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    server = start_server(folder, PODLATENCY_WATCH_INTERVAL_S="0.2")
    old_version = server.wait_for("/readyz", 200).json()["model_version"]
    run = subprocess.Popen(
        [sys.executable, "-m", "measure.loadtest.compare", "--host", server.url, "--endpoints", "v1-predict",
         "--users", "8", "--duration", "5", "--warmup", "1", "--out", str(tmp_path / "report")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(3)
    new = train_bundle(synthetic_training_set(3000, seed=31), TrainingOptions(rounds=20), "swap-test")
    ModelRegistry(folder).save(new)
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 0, output
    endpoint = json.loads((tmp_path / "report" / "results.json").read_text())["endpoints"][0]
    assert endpoint["requests"] > 100
    assert endpoint["failures"] == 0
    assert server.request("GET", "/readyz").json()["model_version"] == new.version != old_version
