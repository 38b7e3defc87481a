"""A real ``podlatency serve`` process: readiness, predictions, llm-d routes, errors and metrics."""

from __future__ import annotations

import http.client
import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from measure.clients import post_json
from podlatency.bundle import ModelBundle
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.learning.workload import generate, pod_rows
from podlatency.registry import ModelRegistry
from tests.integration.conftest import corrupt_copy

ROW = {
    "kv_cache_percentage": 0.4,
    "input_token_length": 900,
    "num_request_waiting": 3,
    "num_request_running": 6,
    "num_tokens_generated": 0,
    "prefix_cache_score": 0.2,
}


def test_readiness_follows_the_model(tmp_path: Path, model_dir: Path, start_server: Any) -> None:
    """A corrupt model leaves the server up but not ready (saying why); a good one and /reload make it ready.

    After the reload it predicts with the new version.
    """
    folder = corrupt_copy(model_dir, tmp_path / "models")
    registry = ModelRegistry(folder)
    server = start_server(folder)
    not_ready = server.wait_for("/readyz", 503)
    assert "ttft.ubj" in not_ready.json()["detail"]
    assert server.request("POST", "/v1/predict", {"pods": [ROW]}).status == 503
    assert server.request("POST", "/reload").status == 500, "a corrupt active model is refused on reload too"

    replacement = train_bundle(synthetic_training_set(3_000, seed=8), TrainingOptions(rounds=20), "test")
    registry.save(replacement)
    reloaded = server.request("POST", "/reload")
    assert reloaded.status == 200
    assert reloaded.json()["model_version"] == replacement.version
    assert server.request("GET", "/readyz").json()["model_version"] == replacement.version
    assert (
        server.request("POST", "/v1/predict", {"pods": [ROW]}).json()["model_version"] == replacement.version
    )


def test_embedded_default_is_trained_once_and_reused(tmp_path: Path, start_server: Any) -> None:
    """An empty model folder gets the embedded default on first start; a second start reuses it."""
    folder = tmp_path / "fresh"
    first = start_server(folder, PODLATENCY_DEFAULT_SAMPLES="5000")
    version = first.wait_for("/readyz", 200).json()["model_version"]
    assert ModelRegistry(folder).active_version() == version
    assert "training the embedded default" in first.log()
    first.stop()

    second = start_server(folder)
    assert second.wait_for("/readyz", 200).json()["model_version"] == version
    assert "training the embedded default" not in second.log()


def test_predict_and_llmd_routes_agree(model_dir: Path, small_bundle: ModelBundle, start_server: Any) -> None:
    """/v1/predict, /predict, /predict/bulk and /predict/bulk/strict give equal numbers for the same rows.

    As in llm-d, a /predict/bulk body that fails validation is a 422 for the whole request.
    """
    server = start_server(model_dir)
    server.wait_for("/readyz", 200)
    rows = pod_rows(7, seed=21)

    ours = server.request("POST", "/v1/predict", {"pods": rows})
    assert ours.status == 200
    ours_body = ours.json()
    assert ours_body["model_version"] == small_bundle.version
    expected = [(p["ttft_ms"], p["tpot_ms"]) for p in ours_body["predictions"]]
    assert all(math.isfinite(value) and value >= 0 for pair in expected for value in pair)

    strict = server.request("POST", "/predict/bulk/strict", {"requests": rows}).json()
    assert strict["total_requests"] == strict["successful_predictions"] == 7
    assert [(p["ttft_ms"], p["tpot_ms"]) for p in strict["predictions"]] == expected
    assert strict["predictions"][0]["model_type"] == "xgboost"

    single = server.request("POST", "/predict", rows[0]).json()
    assert (single["ttft_ms"], single["tpot_ms"]) == expected[0]

    bulk = server.request("POST", "/predict/bulk", {"requests": rows[:2]}).json()
    assert (bulk["successful_predictions"], bulk["failed_predictions"], bulk["errors"]) == (2, 0, [])
    assert [(p["ttft_ms"], p["tpot_ms"]) for p in bulk["predictions"]] == expected[:2]
    invalid = server.request(
        "POST", "/predict/bulk", {"requests": [rows[0], {"kv_cache_percentage": 7}, rows[1]]}
    )
    assert (invalid.status, invalid.json()["field"]) == (422, "requests[1].kv_cache_percentage")

    status = server.request("GET", "/status").json()
    assert status["is_ready"] is True
    assert status["model_version"] == small_bundle.version


def test_bad_input_is_answered_4xx(model_dir: Path, start_server: Any) -> None:
    """Malformed JSON, NaN, wrong types, unknown fields and oversized batches are 4xx JSON errors."""
    server = start_server(model_dir, PODLATENCY_MAX_PODS="8")
    server.wait_for("/readyz", 200)
    cases: list[tuple[str, bytes | dict[str, Any], int]] = [
        ("/v1/predict", b"{", 400),
        ("/v1/predict", b'{"pods": [{"kv_cache_percentage": NaN}]}', 400),
        ("/v1/predict", {"pods": [ROW | {"input_token_length": "many"}]}, 422),
        ("/v1/predict", {"pods": [ROW | {"unknown": 1}]}, 422),
        ("/v1/predict", {"pods": [ROW] * 9}, 413),
        ("/predict/bulk/strict", {"requests": [ROW, ROW | {"prefix_cache_score": 2}]}, 422),
        ("/predict/bulk/strict", {"requests": [ROW] * 10_001}, 422),
        ("/predict", b"[]", 422),
    ]
    for path, body, status in cases:
        answer = server.request("POST", path, body)
        assert answer.status == status, (path, body if isinstance(body, bytes) else "...", answer.body[:200])
        assert answer.json()["detail"]
    assert server.request("POST", "/v1/predict", {"pods": [ROW]}).status == 200, "still serving afterwards"
    assert "Traceback" not in server.log()


def test_metrics_are_scraped(model_dir: Path, start_server: Any) -> None:
    """/metrics exposes request duration by route, per-phase durations, rows per predict and the model.

    Its Content-Type is Prometheus's, the charset once.
    """
    server = start_server(model_dir)
    version = server.wait_for("/readyz", 200).json()["model_version"]
    for _ in range(3):
        server.request("POST", "/v1/predict", {"pods": pod_rows(5)})
    scraped = server.request("GET", "/metrics")
    headers = {name.lower(): value for name, value in scraped.headers.items()}
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = scraped.body.decode()
    assert (
        'podlatency_request_duration_seconds_count{app_name="podlatency",method="POST",path="/v1/predict"'
        in text
    )
    assert 'podlatency_phase_duration_seconds_count{phase="predict_ttft",route="/v1/predict"} 3.0' in text
    assert "podlatency_rows_per_predict_sum 15.0" in text
    assert f'podlatency_active_model_info{{device="cpu",objective="mean",version="{version}"}} 1.0' in text
    frozen = next(line for line in text.splitlines() if line.startswith("podlatency_gc_frozen_objects "))
    assert float(frozen.split()[1]) > 10_000, "the start-up heap is frozen out of full collections"


def test_concurrent_requests_are_batched(model_dir: Path, start_server: Any) -> None:
    """Under concurrent load the server coalesces requests: fewer predict calls, the same answers.

    16 keep-alive clients; a lone request is predicted where it is, so batches need real concurrency.
    """
    server = start_server(model_dir)
    server.wait_for("/readyz", 200)
    server.wait_for_engine("compiled")  # the answers below come from one engine
    rows = pod_rows(7, seed=5)
    body = json.dumps({"pods": rows}).encode()
    expected = server.request("POST", "/v1/predict", body).json()["predictions"]

    def call(_: int) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        answers = [post_json(connection, body)["predictions"] for _ in range(25)]
        connection.close()
        return answers

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = [answer for answers in pool.map(call, range(16)) for answer in answers]
    assert all(answer == expected for answer in answers)
    text = server.request("GET", "/metrics").body.decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("podlatency_requests_per_batch_") and " " in line
    }
    batches, requests = (
        values["podlatency_requests_per_batch_count"],
        values["podlatency_requests_per_batch_sum"],
    )
    assert requests == 401
    assert batches < requests, "some predict calls served several requests"


def test_batching_can_be_switched_off(model_dir: Path, start_server: Any) -> None:
    """PODLATENCY_BATCHING=false predicts each request on its own, with the same answers."""
    server = start_server(model_dir, PODLATENCY_BATCHING="false")
    server.wait_for("/readyz", 200)
    body = server.request("POST", "/v1/predict", {"pods": pod_rows(7, seed=5)}).json()
    assert "batch_wait" not in body["timing_ms"]
    assert "podlatency_requests_per_batch_count 0.0" in server.request("GET", "/metrics").body.decode()


def test_accepted_samples_survive_a_restart(tmp_path: Path, model_dir: Path, start_server: Any) -> None:
    """Samples a real server answered 202 for are still there after it restarts."""
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    rows = [
        row | {"actual_ttft_ms": 100.0 + index, "actual_tpot_ms": 10.0}
        for index, row in enumerate(pod_rows(40))
    ]
    first = start_server(folder)
    first.wait_for("/readyz", 200)
    assert first.request("POST", "/v1/samples", {"samples": rows}).status == 202
    first.stop()
    second = start_server(folder)
    second.wait_for("/readyz", 200)
    assert second.request("POST", "/add_training_data_bulk", {"entries": rows[:1]}).status == 202
    answer = second.request("POST", "/v1/samples", {"samples": rows[:1]}).json()
    held = answer["held"]
    assert held["ttft_training"] + held["ttft_holdout"] == held["tpot_training"] + held["tpot_holdout"] == 42


def test_retraining_follows_a_slower_fleet(tmp_path: Path, model_dir: Path, start_server: Any) -> None:
    """Samples from a fleet twice as slow make the server retrain on its own and publish a better model.

    The new model predicts higher latencies, and its held-out error is below the old one's.
    """
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    server = start_server(folder, PODLATENCY_RETRAIN_INTERVAL_S="0.5", PODLATENCY_RETRAIN_MIN_SAMPLES="2000")
    old_version = server.wait_for("/readyz", 200).json()["model_version"]
    probe = {"pods": pod_rows(50, seed=99)}
    before = server.request("POST", "/v1/predict", probe).json()["predictions"]

    slower = generate(6000, seed=11, slowdown=2.0)
    rows = [
        row | {"actual_ttft_ms": ttft, "actual_tpot_ms": tpot}
        for row, ttft, tpot in zip(
            slower.rows(), slower.ttft_ms.tolist(), slower.tpot_ms.tolist(), strict=True
        )
    ]
    for start in range(0, len(rows), 2000):
        assert server.request("POST", "/v1/samples", {"samples": rows[start : start + 2000]}).status == 202

    deadline = time.monotonic() + 60
    while (version := server.request("GET", "/readyz").json()["model_version"]) == old_version:
        assert time.monotonic() < deadline, "no new model was published"
        time.sleep(0.2)
    after = server.request("POST", "/v1/predict", probe).json()["predictions"]
    ratio = sum(p["ttft_ms"] for p in after) / sum(p["ttft_ms"] for p in before)
    assert 1.5 < ratio < 2.5, ratio
    metrics = server.request("GET", "/metrics").body.decode()
    errors = {
        line.split('version="')[1].split('"')[0]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('podlatency_model_holdout_error{measure="mae_ms",target="ttft"')
    }
    assert errors[version] < errors[old_version]


def test_a_trainer_publishes_and_a_predictor_follows(
    tmp_path: Path, model_dir: Path, start_server: Any
) -> None:
    """Two processes on one model folder: what the trainer publishes, the predictor serves within seconds.

    Each role answers only its own routes.
    """
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    predictor = start_server(folder, PODLATENCY_ROLE="predictor", PODLATENCY_WATCH_INTERVAL_S="0.2")
    trainer = start_server(folder, PODLATENCY_ROLE="trainer", PODLATENCY_RETRAIN_INTERVAL_S="0")
    old_version = predictor.wait_for("/readyz", 200).json()["model_version"]
    trainer.wait_for("/readyz", 200)
    assert predictor.request("POST", "/v1/samples", {"samples": []}).status == 404
    assert trainer.request("POST", "/v1/predict", {"pods": pod_rows(1)}).status == 404

    slower = generate(4000, seed=12, slowdown=2.0)
    rows = [
        row | {"actual_ttft_ms": ttft, "actual_tpot_ms": tpot}
        for row, ttft, tpot in zip(
            slower.rows(), slower.ttft_ms.tolist(), slower.tpot_ms.tolist(), strict=True
        )
    ]
    assert trainer.request("POST", "/v1/samples", {"samples": rows}).status == 202
    outcome = trainer.request("POST", "/v1/retrain").json()
    assert outcome["published"], outcome
    deadline = time.monotonic() + 15
    while predictor.request("GET", "/readyz").json()["model_version"] != outcome["version"]:
        assert time.monotonic() < deadline, "the predictor never switched"
        time.sleep(0.1)
    assert (
        predictor.request("POST", "/v1/predict", {"pods": pod_rows(3)}).json()["model_version"] != old_version
    )
