"""The app in process: routes, error mapping, OpenAPI and per-phase spans from an in-memory exporter."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from litestar.testing import TestClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind

from measure import seed_designs
from podlatency.bundle import ModelBundle
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.learning.workload import generate, pod_rows
from podlatency.metrics import service_metrics
from podlatency.registry import ModelRegistry
from podlatency.runtime import Runtime
from podlatency.schema import FEATURE_NAMES
from podlatency.settings import Settings
from podlatency.tracing.otel import Tracing
from podlatency.web.app import create_app
from podlatency.web.batched import INLINE_BODY_BYTES

PHASES = {
    "dispatch", "decode", "frame", "batch_wait", "predict_ttft", "predict_tpot", "resume", "encode",
    "respond",
}  # fmt: skip


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def runtime(model_dir: Path, exporter: InMemorySpanExporter) -> Runtime:
    return Runtime(cpu_settings(model_dir, max_pods=16), all_traced(exporter))


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(runtime, extensions=[seed_designs.extension(runtime)])) as test_client:
        wait_ready(test_client)
        yield test_client


def all_traced(exporter: InMemorySpanExporter) -> Tracing:
    """Every request head-sampled, its spans into ``exporter``."""
    return Tracing.to(SimpleSpanProcessor(exporter), sampler=ParentBased(ALWAYS_ON))


def cpu_settings(model_dir: Path, **overrides: Any) -> Settings:
    """On the CPU with XGBoost: answers compared exactly come from one engine (compiling is tested below)."""
    return Settings(model_dir=model_dir, device="cpu", engine="xgboost", **overrides)


def wait_ready(test_client: TestClient[Any]) -> None:
    """Until ``/readyz`` says 200 (30 s at most)."""
    deadline = time.monotonic() + 30
    while test_client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "model never became ready"
        time.sleep(0.05)


def test_predict_returns_one_prediction_per_pod_in_order(client: TestClient[Any]) -> None:
    """Each pod gets finite, non-negative TTFT/TPOT, in request order, with the model version and timings."""
    rows = [row | {"pod": f"pod-{index}"} for index, row in enumerate(pod_rows(7, seed=3))]
    response = client.post("/v1/predict", json={"pods": rows})
    assert response.status_code == 200
    body = response.json()
    assert [p["pod"] for p in body["predictions"]] == [f"pod-{index}" for index in range(7)]
    assert all(p["ttft_ms"] >= 0 and p["tpot_ms"] >= 0 for p in body["predictions"])
    assert body["model_version"] == client.get("/v1/model").json()["version"]
    assert {"dispatch", "decode", "frame", "predict_ttft", "predict_tpot", "total"} <= set(body["timing_ms"])


def test_phase_spans_are_children_of_the_server_span(
    client: TestClient[Any], exporter: InMemorySpanExporter, runtime: Runtime
) -> None:
    """One server span per predict request, with one child span per phase carrying pods, model and device."""
    exporter.clear()
    assert client.post("/v1/predict", json={"pods": pod_rows(3)}).status_code == 200
    assert runtime.tracing.writer.flush()
    spans = exporter.get_finished_spans()
    servers = [span for span in spans if span.kind == SpanKind.SERVER]
    assert len(servers) == 1
    server = servers[0]
    children = [
        span for span in spans if span.parent is not None and span.parent.span_id == server.context.span_id
    ]
    assert {span.name for span in children} == PHASES
    frame = next(span for span in children if span.name == "frame")
    assert frame.attributes is not None
    assert frame.attributes["podlatency.pods"] == 3
    assert frame.attributes["podlatency.device"] == "cpu"
    assert frame.attributes["podlatency.model_version"] == client.get("/v1/model").json()["version"]


def test_server_span_continues_the_callers_trace(
    client: TestClient[Any], exporter: InMemorySpanExporter, runtime: Runtime
) -> None:
    """A request carrying W3C `traceparent` gets its server span in the caller's trace, under its span."""
    exporter.clear()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    assert client.post("/v1/predict", json={"pods": pod_rows(2)}, headers=headers).status_code == 200
    assert runtime.tracing.writer.flush()
    server = next(span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER)
    assert server.name == "POST /v1/predict"
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == parent_id
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/predict"
    assert server.attributes["http.response.status_code"] == 200


def test_server_span_names_the_route_template_and_marks_server_errors(
    client: TestClient[Any], exporter: InMemorySpanExporter
) -> None:
    """Span names use the route template (low cardinality); 4xx are not errors, 5xx are."""
    exporter.clear()
    assert client.get("/v1/models/0123456789abcdef/bundle").status_code == 404
    server = next(span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER)
    assert server.name == "GET /v1/models/{version}/bundle"
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 404
    assert server.status.status_code.name == "UNSET"


def test_server_errors_mark_the_server_span(tmp_path: Path) -> None:
    """A 5xx answer (here 503 before any model is loaded) marks the server span as an error."""
    exporter = InMemorySpanExporter()
    app = create_app(Runtime(cpu_settings(tmp_path), all_traced(exporter)), load_model=False)
    with TestClient(app) as test_client:
        assert test_client.post("/v1/predict", json={"pods": pod_rows(1)}).status_code == 503
    server = next(span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER)
    assert server.status.status_code.name == "ERROR"
    assert server.attributes is not None
    assert server.attributes["error.type"] == "503"


def test_sync_handlers_run_on_the_configured_thread_pool(model_dir: Path) -> None:
    """PODLATENCY_THREADS sizes the pool sync handlers run on (Litestar uses the loop's default executor).

    With batching off ``/v1/predict`` runs there (with it on, only bodies too big to decode on the
    event loop do).
    """
    settings = cpu_settings(model_dir, threads=2, batching=False)
    app = create_app(Runtime(settings))
    with TestClient(app) as test_client:
        wait_ready(test_client)
        with ThreadPoolExecutor(8) as callers:
            statuses = list(
                callers.map(
                    lambda index: (
                        test_client.post("/v1/predict", json={"pods": pod_rows(3, seed=index)}).status_code
                    ),
                    range(32),
                )
            )
        handler_threads = {
            thread.name for thread in threading.enumerate() if thread.name.startswith("podlatency-handler")
        }
    assert statuses == [200] * 32
    assert 1 <= len(handler_threads) <= 2, handler_threads


def test_health_routes_are_not_traced(
    client: TestClient[Any], exporter: InMemorySpanExporter, runtime: Runtime
) -> None:
    """Probes and scrapes leave no spans."""
    exporter.clear()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
    assert runtime.tracing.writer.flush()
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    ("path", "payload", "status", "error"),
    [
        ("/v1/predict", b"{not json", 400, "malformed_body"),
        ("/v1/predict", b'{"pods": []}', 422, "invalid_field"),
        ("/v1/predict", b'{"pods": [{"kv_cache_percentage": 2}]}', 422, "invalid_field"),
        ("/predict", b'{"kv_cache_percentage": 0.1}', 422, "invalid_field"),
        ("/predict/bulk/strict", b'{"requests": []}', 422, "invalid_field"),
    ],
)
def test_client_errors_are_json_4xx(
    client: TestClient[Any], path: str, payload: bytes, status: int, error: str
) -> None:
    """Bad bodies get a 4xx JSON error with a code and detail, never a 500."""
    response = client.post(path, content=payload, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["detail"]


def test_too_many_pods_is_413(client: TestClient[Any]) -> None:
    """More pods than PODLATENCY_MAX_PODS is 413 naming `pods`."""
    response = client.post("/v1/predict", json={"pods": pod_rows(17)})
    assert (response.status_code, response.json()["field"]) == (413, "pods")


def test_unknown_route_and_method_keep_the_error_shape(client: TestClient[Any]) -> None:
    """404 and 405 come back in the same JSON shape as our own errors."""
    assert client.get("/nope").json()["error"] == "not_found"
    assert client.get("/v1/predict").json()["error"] == "method_not_allowed"


def test_openapi_documents_the_request_bodies(client: TestClient[Any]) -> None:
    """The served OpenAPI schema describes /v1/predict's body, bounds included."""
    schema = client.get("/schema/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    row = body["properties"]["pods"]["items"]
    assert row["properties"]["kv_cache_percentage"]["maximum"] == 1.0
    assert "input_token_length" in row["required"]
    assert "/predict/bulk/strict" in schema["paths"]


def test_not_ready_is_503_with_reason(tmp_path: Path) -> None:
    """Before a model is loaded, readiness and predictions answer 503 with Retry-After and the reason."""
    app = create_app(
        Runtime(cpu_settings(tmp_path)),
        load_model=False,
    )
    with TestClient(app) as test_client:
        ready = test_client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "1"
        assert test_client.post("/v1/predict", json={"pods": pod_rows(1)}).status_code == 503
        assert test_client.get("/status").json()["is_ready"] is False


def test_status_names_the_stored_objective_before_the_model_is_loaded(tmp_path: Path) -> None:
    """With the objective setting at auto, /status reports the stored model's objective while it loads."""
    p90 = train_bundle(
        synthetic_training_set(1_000, seed=3), TrainingOptions(objective="quantile", rounds=5), "t"
    )
    ModelRegistry(tmp_path).save(p90)
    app = create_app(
        Runtime(cpu_settings(tmp_path)),
        load_model=False,
    )
    with TestClient(app) as test_client:
        status = test_client.get("/status").json()
    assert (status["is_ready"], status["objective_type"], status["quantile"]) == (False, "quantile", 0.9)


@pytest.mark.parametrize("design", ["to-thread", "thread-pool", "dedicated-pool"])
def test_seed_design_traces_show_queue_wait_per_pod(
    client: TestClient[Any], exporter: InMemorySpanExporter, design: str, runtime: Runtime
) -> None:
    """Executor-based seed designs record, per pod, its wait in the executor queue and its run."""
    exporter.clear()
    assert client.post(f"/seed/{design}", json={"pods": pod_rows(5)}).status_code == 200
    assert runtime.tracing.writer.flush()
    spans = exporter.get_finished_spans()
    for name in ("queue_wait", "predict_one"):
        indices = sorted(
            int(str((span.attributes or {})["podlatency.pod_index"])) for span in spans if span.name == name
        )
        assert indices == [0, 1, 2, 3, 4], name
    waits = [span for span in spans if span.name == "queue_wait"]
    assert all(span.end_time is not None and span.start_time is not None for span in waits)
    assert all(span.end_time >= span.start_time for span in waits)  # type: ignore[operator]


def test_samples_are_accepted_whole_or_not_at_all(tmp_path: Path, model_dir: Path) -> None:
    """Valid samples get 202 and are kept; a request with one bad row gets 422 and keeps nothing."""
    shutil.copytree(model_dir, tmp_path / "models")
    runtime = Runtime(cpu_settings(tmp_path / "models"))
    app = create_app(runtime)
    row = {**pod_rows(1, seed=4)[0], "actual_ttft_ms": 120.0, "actual_tpot_ms": 11.0}
    with TestClient(app) as test_client:
        response = test_client.post("/v1/samples", json={"samples": [row, row, row]})
        assert response.status_code == 202
        assert response.json()["accepted"] == 3
        bad = test_client.post("/v1/samples", json={"samples": [row, row | {"actual_tpot_ms": "slow"}]})
        assert (bad.status_code, bad.json()["field"]) == (422, "samples[1].actual_tpot_ms")
        llmd = test_client.post("/add_training_data_bulk", json={"entries": [row | {"newer_field": 1}]})
        assert llmd.status_code == 202
        assert llmd.json() == {
            "message": "Accepted 1 training samples.",
            "accepted": 1,
            "kept": {"ttft": 1, "tpot": 1},
            "unobserved": 0,
        }
        counts = runtime.samples.counts()
    assert counts["ttft_training"] + counts["ttft_holdout"] == 4
    assert counts["tpot_training"] + counts["tpot_holdout"] == 4
    folder = tmp_path / "models" / "samples"
    written = [(folder / name).read_text().splitlines() for name in ("samples.jsonl", "holdout.jsonl")]
    assert sum(map(len, written)) == 4


def test_model_routes_serve_the_stored_versions(client: TestClient[Any], small_bundle: ModelBundle) -> None:
    """/v1/models lists versions; llm-d's model routes serve the active booster files.

    A downloaded file loads in XGBoost and predicts what the bundle predicts.
    """
    listing = client.get("/v1/models").json()
    assert listing["active"] == small_bundle.version
    assert [version["version"] for version in listing["versions"]] == [small_bundle.version]
    models = client.get("/models/list").json()["models"]
    assert models["ttft"]["exists"]
    assert models["tpot"]["exists"]
    info = client.get("/model/ttft/info").json()
    download = client.get("/model/ttft/download")
    assert download.status_code == 200
    assert download.headers["x-model-version"] == small_bundle.version == info["version"]
    assert hashlib.sha256(download.content).hexdigest() == info["sha256"]
    booster = xgb.Booster()
    booster.load_model(bytearray(download.content))
    rows = generate(5, seed=2).features
    np.testing.assert_allclose(
        booster.inplace_predict(rows), small_bundle.boosters["ttft"].inplace_predict(rows)
    )
    missing = client.get("/model/nope/info")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


def test_batched_predictions_hold_no_handler_thread(model_dir: Path) -> None:
    """With batching on, small bodies are queued from the event loop and need no handler thread.

    The only handler thread is kept busy while 64 concurrent ``/v1/predict`` requests, and llm-d's
    ``/predict`` and ``/predict/bulk/strict``, get their answers; a body too
    big to decode on the event loop is decoded on that thread once it is free (and still answers 4xx
    when it does not decode).
    """
    settings = cpu_settings(model_dir, threads=1, max_pods=1024)
    app = create_app(Runtime(settings))
    with TestClient(app) as test_client:
        wait_ready(test_client)
        body = {"pods": pod_rows(3, seed=1)}
        expected = test_client.post("/v1/predict", json=body).json()["predictions"]
        release = threading.Event()
        blocker = app.state.handler_pool.submit(release.wait, 30)
        try:
            with ThreadPoolExecutor(32) as callers:
                answers = list(callers.map(lambda _: test_client.post("/v1/predict", json=body), range(64)))
            one = test_client.post("/predict", json=body["pods"][0])
            bulk = test_client.post("/predict/bulk/strict", json={"requests": body["pods"]})
            assert not blocker.done(), "the answers waited for the handler thread"
        finally:
            release.set()
        assert [answer.json()["predictions"] for answer in answers] == [expected] * 64
        assert one.json()["ttft_ms"] == expected[0]["ttft_ms"]
        assert [row["tpot_ms"] for row in bulk.json()["predictions"]] == [row["tpot_ms"] for row in expected]

        big = pod_rows(400, seed=2)
        assert len(json.dumps({"pods": big})) > INLINE_BODY_BYTES
        answer = test_client.post("/v1/predict", json={"pods": big})
        assert answer.status_code == 200
        assert len(answer.json()["predictions"]) == 400
        broken = test_client.post("/v1/predict", json={"pods": [*big[:-1], {"pod": "x"}]})
        assert broken.status_code == 422, broken.text


def test_compiled_trees_take_over_and_a_lone_request_is_predicted_where_it_is(
    tmp_path: Path, small_bundle: ModelBundle
) -> None:
    """With the default engine the model is compiled in the background.

    /v1/model, /status and the metrics then say ``compiled``, and a lone request is predicted on the
    event loop, not handed to the batch thread.
    """
    folder = tmp_path / "models"
    ModelRegistry(folder).save(small_bundle)
    compiled_before = service_metrics().compiles.labels("compiled")._value.get()  # other tests compile too
    runtime = Runtime(Settings(model_dir=folder, device="cpu"))
    with TestClient(create_app(runtime)) as test_client:
        wait_ready(test_client)
        deadline = time.monotonic() + 120
        while test_client.get("/v1/model").json()["engine"] != "compiled":
            assert time.monotonic() < deadline, "the model was never compiled"
            time.sleep(0.1)
        assert test_client.get("/v1/model").json()["engines"] == {"compiled": 1}
        assert test_client.get("/status").json()["engine"] == "compiled"
        metrics = test_client.get("/metrics").text
        assert 'podlatency_predict_engine{engine="compiled",min_rows="1"} 1.0' in metrics
        assert f'podlatency_model_compiles_total{{outcome="compiled"}} {compiled_before + 1}' in metrics

        answer = test_client.post("/v1/predict", json={"pods": pod_rows(7, seed=2)})
        assert answer.status_code == 200
        batcher = runtime.service.holder.current().batcher
        assert batcher is not None
        assert batcher._relief is None, "a lone request never needed the batch thread"


def test_the_model_route_says_which_features_matter(client: TestClient[Any]) -> None:
    """``/v1/model`` carries each target's feature importance: shares of the gain, largest first."""
    importance = client.get("/v1/model").json()["feature_importance"]
    assert set(importance) == {"ttft", "tpot"}
    for shares in importance.values():
        assert set(shares) == set(FEATURE_NAMES)
        assert list(shares.values()) == sorted(shares.values(), reverse=True)
        assert sum(shares.values()) == pytest.approx(1.0, abs=0.01)
