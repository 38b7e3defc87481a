"""A real server played against as the llm-d router plays it (its Go client, ``latencypredictorclient``).

The router's prediction path is ``POST /predict/bulk/strict`` with one row per candidate pod; its
training path posts router-shaped observation rows (TTFT-only and TPOT-only) to
``/add_training_data_bulk`` every second, at most 1,000 per post; every 60 s it polls ``/status``,
``/model/download/info`` and, for an ``xgboost`` model, both tree dumps. Every answer it reads is
checked here as Go's ``encoding/json`` would decode it into the client's structs.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from podlatency.cli import main as cli_main
from podlatency.learning.workload import generate, router_observations

GO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
LEARNING_ENV = {
    "PODLATENCY_DEFAULT_SAMPLES": "5000",
    "PODLATENCY_RETRAIN_INTERVAL_S": "0",
    "PODLATENCY_RETRAIN_MIN_SAMPLES": "100",
}
SLOWDOWN = 1.5
"""The observed fleet is this much slower than the embedded default assumes, so retraining must learn."""

# The Go client's structs, field by field: what each field must be for its decoder to accept it.
PREDICTION = {
    "ttft_ms": "float64",
    "tpot_ms": "float64",
    "predicted_at": "time",
    "model_type": "string",
    "objective_type": "string",
    "quantile": "float64",
    "last_model_load": "*time",
}
SPREAD = {
    "ttft_uncertainty": "float64",
    "tpot_uncertainty": "float64",
    "ttft_prediction_bounds": "[2]float64",
    "tpot_prediction_bounds": "[2]float64",
}
"""The fields the client declares with ``omitempty`` and fills from a model serving a quantile set."""
BULK = {
    "total_requests": "int",
    "successful_predictions": "int",
    "failed_predictions": "int",
    "processing_time_ms": "float64",
}
STATUS = {
    "is_ready": "bool",
    "model_type": "string",
    "objective_type": "string",
    "quantile": "float64",
    "last_model_load": "*time",
    "models_exist": "map[string]bool",
}
MODEL_INFO = {
    "model_type": "string",
    "objective_type": "string",
    "quantile": "float64",
    "model_status": "map[string]bool",
}


GO_KINDS: dict[str, Any] = {
    "float64": lambda value: isinstance(value, int | float) and not isinstance(value, bool),
    "int": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "bool": lambda value: isinstance(value, bool),
    "string": lambda value: isinstance(value, str),
    "time": lambda value: isinstance(value, str) and GO_TIME.match(value) is not None,
    "*time": lambda value: value is None or (isinstance(value, str) and GO_TIME.match(value) is not None),
    # Go fills a [2]float64 from a JSON array element by element: a longer one loses values silently.
    "[2]float64": lambda value: (
        isinstance(value, list) and len(value) == 2 and all(GO_KINDS["float64"](item) for item in value)
    ),
    "map[string]bool": lambda value: (
        isinstance(value, dict) and all(isinstance(flag, bool) for flag in value.values())
    ),
}
"""Whether Go's encoding/json decodes a value into a field of each kind (null: pointers only)."""


def assert_go_shape(body: dict[str, Any], struct: dict[str, str]) -> None:
    for field, kind in struct.items():
        assert field in body, f"{field} missing"
        assert GO_KINDS[kind](body[field]), f"{field}={body[field]!r} does not decode as {kind}"


def router_row(row: dict[str, Any]) -> dict[str, Any]:
    """A prediction row as the Go client marshals it: every field, 1 token generated, no empty pod_type."""
    marshalled = {
        "kv_cache_percentage": row["kv_cache_percentage"],
        "input_token_length": row["input_token_length"],
        "num_request_waiting": row["num_request_waiting"],
        "num_request_running": row["num_request_running"],
        "num_tokens_generated": 1,
        "prefix_cache_score": row["prefix_cache_score"],
        "encoder_input_size": row.get("encoder_input_size", 0),
        "encoder_matched_size": row.get("encoder_matched_size", 0),
        "prefill_tokens_in_flight": row["prefill_tokens_in_flight"],
        "decode_tokens_in_flight": 0,
    }
    if row.get("pod_type"):
        marshalled["pod_type"] = row["pod_type"]
    return marshalled


def predict(server: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answer = server.request("POST", "/predict/bulk/strict", {"requests": rows})
    assert answer.status == 200, answer.body
    body = answer.json()
    assert_go_shape(body, BULK)
    assert len(body["predictions"]) == body["total_requests"] == len(rows)
    for prediction in body["predictions"]:
        assert_go_shape(prediction, PREDICTION)
    return list(body["predictions"])


def post_observations(server: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), 1000):  # the client's MaxSampleSize
        answer = server.request("POST", "/add_training_data_bulk", {"entries": rows[start : start + 1000]})
        assert answer.status == 202, answer.body


def poll(server: Any) -> dict[str, Any]:
    """The router's 60 s polls; every one answers as the client expects. Returns /status."""
    status = server.request("GET", "/status")
    assert status.status == 200
    assert_go_shape(status.json(), STATUS)
    info = server.request("GET", "/model/download/info")
    assert info.status == 200
    assert_go_shape(info.json(), MODEL_INFO)
    assert info.json()["model_type"] == "xgboost"
    for target in ("ttft", "tpot"):
        trees = server.request("GET", f"/model/{target}/xgb/json")
        assert trees.status == 200
        dumped = trees.json()
        assert isinstance(dumped, list)
        assert dumped
        assert {"nodeid", "split"} <= set(dumped[0])
    return dict(status.json())


def learn_and_check(server: Any, objective: str) -> dict[str, float]:
    """Post 3,000 requests as router rows, retrain, and measure the published model on fresh pods."""
    post_observations(server, router_observations(3_000, seed=40, slowdown=SLOWDOWN))
    retrained = server.request("POST", "/v1/retrain")
    assert retrained.status == 200
    outcome = retrained.json()
    assert outcome["published"], outcome
    assert outcome["objective"] == objective
    fresh = generate(2_000, seed=41, slowdown=SLOWDOWN)
    rows = [router_row(row) for row in fresh.rows()]
    predictions = predict(server, rows)
    figures: dict[str, float] = {}
    for target, actual in (("ttft", fresh.ttft_ms), ("tpot", fresh.tpot_ms)):
        predicted = [prediction[f"{target}_ms"] for prediction in predictions]
        relative = [abs(p - a) / a for p, a in zip(predicted, actual.tolist(), strict=True)]
        figures[f"{target}_median_relative_error"] = statistics.median(relative)
        figures[f"{target}_coverage"] = sum(a <= p for p, a in zip(predicted, actual, strict=True)) / len(
            actual
        )
        images = [
            index for index, row in enumerate(rows) if row["encoder_input_size"] > row["encoder_matched_size"]
        ]
        figures[f"{target}_multimodal_median_relative_error"] = statistics.median(relative[i] for i in images)
    print(f"router rows learned ({objective}): " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    return figures


def test_predictions_answer_as_the_router_reads_them(
    tmp_path: Path, model_dir: Path, start_server: Any
) -> None:
    """Bulk predictions come back one per row, in order, as Go decodes them; every poll answers.

    Input is taken as llm-d takes it (integral floats, unknown fields); bad input is a 422 naming the field.
    """
    server = start_server(model_dir)
    server.wait_for("/readyz", 200)
    server.wait_for_engine("compiled")  # bulk and one-by-one answers below come from one engine
    status = poll(server)
    assert (status["is_ready"], status["objective_type"], status["quantile"]) == (True, "mean", 0.9)

    rows = [router_row(row) for row in generate(7, seed=3).rows()]
    bulk = predict(server, rows)
    one_by_one = [server.request("POST", "/predict", row).json() for row in rows]
    assert [p["ttft_ms"] for p in bulk] == [p["ttft_ms"] for p in one_by_one]
    assert [p["tpot_ms"] for p in bulk] == [p["tpot_ms"] for p in one_by_one]
    assert not set(SPREAD) & set(bulk[0]), "a mean model leaves them out: Go reads zeros"

    integral = rows[0] | {"input_token_length": 900.0, "newer_router_field": "ignored"}
    assert server.request("POST", "/predict/bulk/strict", {"requests": [integral]}).status == 200
    refusals = [
        ({k: v for k, v in rows[0].items() if k != "input_token_length"}, "requests[0].input_token_length"),
        (rows[0] | {"encoder_input_size": 1, "encoder_matched_size": 2}, "requests[0].encoder_matched_size"),
        (rows[0] | {"encoder_input_size": -1}, "requests[0].encoder_input_size"),
        (rows[0] | {"input_token_length": 900.5}, "requests[0].input_token_length"),
    ]
    for row, field in refusals:
        for path in ("/predict/bulk/strict", "/predict/bulk"):
            answer = server.request("POST", path, {"requests": [rows[1], row]})
            assert (answer.status, answer.json()["field"]) == (422, field.replace("[0]", "[1]")), path
    single = server.request(
        "POST", "/predict", {k: v for k, v in rows[0].items() if k != "prefix_cache_score"}
    )
    assert (single.status, single.json()["field"]) == (422, "prefix_cache_score")

    root = server.request("GET", "/").json()
    assert root["roles"] == ["predictor", "trainer"]
    assert root["is_ready"] is True
    listed = server.request("GET", "/models/list").json()["models"]
    assert set(listed) == {"ttft", "tpot", "ttft_scaler", "tpot_scaler", "ttft_gated", "tpot_gated"}
    assert listed["ttft"]["exists"]
    assert not listed["ttft_gated"]["exists"]
    export = server.request("GET", "/model/export")
    assert export.status == 501
    assert "/v1/models/" in export.json()["detail"]


def test_router_rows_are_learned_per_target(tmp_path: Path, start_server: Any) -> None:
    """TTFT-only and TPOT-only rows train a model within 15% median relative error on fresh pods.

    TPOT included, and multimodal pods too; the training surface (data status, flush, metrics) answers.
    """
    server = start_server(tmp_path / "models", **LEARNING_ENV)
    server.wait_for("/readyz", 200, timeout=120)
    figures = learn_and_check(server, "mean")
    for target in ("ttft", "tpot"):
        assert figures[f"{target}_median_relative_error"] <= 0.15, figures
    assert figures["ttft_multimodal_median_relative_error"] <= 0.15, figures
    poll(server)

    status = server.request("GET", "/data/status").json()
    assert status["training_data"]["ttft_samples"] == status["training_data"]["tpot_samples"] == 2_700
    metrics = server.request("GET", "/metrics").body.decode()
    assert 'training_samples_count{bucket="0",cache_bucket="0",model="ttft"' in metrics
    assert re.search(r'ttft_importance\{feature="uncached_encoder_items"\} 0\.\d*[1-9]', metrics)
    assert 'model_type{model_type="xgboost",type="xgboost"} 1.0' in metrics

    assert server.request("POST", "/flush", {"flush_training_data": "yes"}).status == 422
    flushed = server.request("POST", "/flush", {"flush_test_data": False, "reason": "new fleet"}).json()
    assert (flushed["ttft_training_samples_flushed"], flushed["tpot_test_samples_flushed"]) == (2_700, 0)
    assert flushed["metrics_cleared"] is True
    server.stop()
    again = start_server(tmp_path / "models", port=server.port, **LEARNING_ENV)
    counts = again.request("GET", "/data/status").json()
    assert (counts["training_data"]["total_samples"], counts["test_data"]["total_samples"]) == (0, 600)


def test_a_quantile_deployment_stays_calibrated(tmp_path: Path, start_server: Any) -> None:
    """A model trained by `podlatency train --objective quantile` stays p90 through a retrain on router rows.

    The server runs with the default objective setting (auto); the retrained model covers 85-95% of
    fresh actuals for both targets, and /status says quantile 0.9 before and after. Every prediction
    carries the default set's bounds ([p50, p99], which cover about half and 99% of actuals) and
    uncertainty, as Go decodes them.
    """
    folder = tmp_path / "models"
    trained = [
        "train",
        "--synthetic",
        "5000",
        "--objective",
        "quantile",
        "--alpha",
        "0.9",
        "--out",
        str(folder),
    ]
    assert cli_main(trained) == 0
    server = start_server(folder, **LEARNING_ENV)
    server.wait_for("/readyz", 200)
    before = poll(server)
    assert (before["objective_type"], before["quantile"]) == ("quantile", 0.9)
    figures = learn_and_check(server, "quantile")
    for target in ("ttft", "tpot"):
        assert abs(figures[f"{target}_coverage"] - 0.9) <= 0.05, figures
    after = poll(server)
    assert (after["objective_type"], after["quantile"]) == ("quantile", 0.9)
    assert after["quantiles"] == [0.5, 0.9, 0.95, 0.99]
    fresh = generate(2_000, seed=42, slowdown=SLOWDOWN)
    predictions = predict(server, [router_row(row) for row in fresh.rows()])
    for target, actual in (("ttft", fresh.ttft_ms.tolist()), ("tpot", fresh.tpot_ms.tolist())):
        for prediction in predictions:
            assert_go_shape(prediction, SPREAD)
            low, high = prediction[f"{target}_prediction_bounds"]
            assert low <= prediction[f"{target}_ms"] <= high
            assert prediction[f"{target}_uncertainty"] > 0
        lows = [prediction[f"{target}_prediction_bounds"][0] for prediction in predictions]
        highs = [prediction[f"{target}_prediction_bounds"][1] for prediction in predictions]
        below_low = sum(a <= low for a, low in zip(actual, lows, strict=True)) / len(actual)
        below_high = sum(a <= high for a, high in zip(actual, highs, strict=True)) / len(actual)
        assert 0.4 <= below_low <= 0.6, (target, below_low)
        assert below_high >= 0.95, (target, below_high)
