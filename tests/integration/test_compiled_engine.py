"""Compiled trees in a real server process.

Switched to under Locust load, reused after a restart, refused when tampered with, and XGBoost serving
on when there is no compiler.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from podlatency.engines.compiled import platform_key
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.learning.workload import pod_rows
from podlatency.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]


def compiles(server: Any, outcome: str) -> float:
    """``podlatency_model_compiles_total`` for ``outcome`` (0 before the first)."""
    for line in server.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(f'podlatency_model_compiles_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0


def wait_for_compiles(server: Any, outcome: str, count: float, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while compiles(server, outcome) < count:
        assert time.monotonic() < deadline, f"no {outcome} compile after {timeout} s:\n{server.log()[-2000:]}"
        time.sleep(0.2)


def small_model_folder(folder: Path, seed: int) -> str:
    """A model folder whose active version is a small bundle (quick to compile under load)."""
    bundle = train_bundle(synthetic_training_set(3000, seed=seed), TrainingOptions(rounds=20), "compile-test")
    ModelRegistry(folder).save(bundle)
    return bundle.version


@pytest.mark.slow
def test_a_new_model_compiles_and_switches_under_load_failing_no_request(
    tmp_path: Path, start_server: Any
) -> None:
    """Locust drives /v1/predict while the first model, then a newly activated one, compile and switch."""
    folder = tmp_path / "models"
    small_model_folder(folder, seed=41)
    server = start_server(
        folder, PODLATENCY_COMPILED_DIR=str(tmp_path / "compiled"), PODLATENCY_WATCH_INTERVAL_S="0.2"
    )
    server.wait_for("/readyz", 200)
    run = subprocess.Popen(
        [sys.executable, "-m", "measure.loadtest.compare", "--host", server.url, "--endpoints", "v1-predict",
         "--users", "4", "--duration", "14", "--warmup", "0.5", "--out", str(tmp_path / "report")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for_compiles(server, "compiled", 1, timeout=60)
    new_version = small_model_folder(folder, seed=42)
    output, _ = run.communicate(timeout=180)
    assert run.returncode == 0, output
    endpoint = json.loads((tmp_path / "report" / "results.json").read_text())["endpoints"][0]
    assert endpoint["requests"] > 100
    assert endpoint["failures"] == 0
    wait_for_compiles(server, "compiled", 2)
    server.wait_for_engine("compiled")
    model = server.request("GET", "/v1/model").json()
    assert model["version"] == new_version
    assert compiles(server, "failed") == compiles(server, "mismatch") == 0


def test_a_restart_loads_the_compiled_model_and_a_tampered_one_is_compiled_again(
    tmp_path: Path, start_server: Any
) -> None:
    folder = tmp_path / "models"
    version = small_model_folder(folder, seed=43)
    compiled = tmp_path / "compiled"
    first = start_server(folder, PODLATENCY_COMPILED_DIR=str(compiled))
    first.wait_for_engine("compiled")
    first.stop()
    library = compiled / version / platform_key() / "ttft.so"
    assert library.is_file()

    second = start_server(folder, PODLATENCY_COMPILED_DIR=str(compiled))
    second.wait_for_engine("compiled")
    assert compiles(second, "cached") == 1
    assert compiles(second, "compiled") == 0
    second.stop()

    library.write_bytes(library.read_bytes()[:-64] + b"\0" * 64)
    third = start_server(folder, PODLATENCY_COMPILED_DIR=str(compiled))
    third.wait_for_engine("compiled")
    assert compiles(third, "compiled") == 1, "the tampered library was not loaded but compiled again"
    assert "does not match its manifest" in third.log()


def test_without_a_compiler_xgboost_keeps_serving(tmp_path: Path, start_server: Any) -> None:
    folder = tmp_path / "models"
    small_model_folder(folder, seed=44)
    server = start_server(
        folder,
        PODLATENCY_COMPILED_DIR=str(tmp_path / "compiled"),
        PODLATENCY_COMPILER="podlatency-no-such-compiler",
    )
    server.wait_for("/readyz", 200)
    wait_for_compiles(server, "failed", 1)
    assert server.request("GET", "/v1/model").json()["engine"] == "xgboost"
    assert server.request("GET", "/status").json()["engine"] == "xgboost"
    assert (
        'podlatency_predict_engine{engine="xgboost",min_rows="1"} 1.0'
        in server.request("GET", "/metrics").body.decode()
    )
    answer = server.request("POST", "/v1/predict", {"pods": pod_rows(7, seed=1)})
    assert answer.status == 200
    log = server.log()
    assert log.count("stays on XGBoost") == 1, log
    assert "podlatency-no-such-compiler" in log
    shutil.rmtree(tmp_path / "compiled", ignore_errors=True)
