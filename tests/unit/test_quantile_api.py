"""Asking for quantiles: ``/v1/predict``'s ``quantiles``, the llm-d bounds, and where the set is listed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from podlatency.bundle import ModelBundle
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.learning.workload import pod_rows
from podlatency.registry import ModelRegistry
from podlatency.runtime import Runtime
from podlatency.web.app import create_app
from tests.unit.test_app import cpu_settings, wait_ready

QUANTILES = (0.5, 0.9, 0.95, 0.99)


@pytest.fixture(scope="module")
def set_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder serving the default quantile set (primary p90)."""
    options = TrainingOptions(objective="quantile", quantiles=QUANTILES, rounds=40)
    bundle: ModelBundle = train_bundle(synthetic_training_set(4_000, seed=6), options, source="test")
    folder = tmp_path_factory.mktemp("set-models")
    ModelRegistry(folder).save(bundle)
    return folder


@pytest.fixture(scope="module")
def client(set_folder: Path) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(Runtime(cpu_settings(set_folder)))) as test_client:
        wait_ready(test_client)
        yield test_client


def test_without_quantiles_the_answer_is_unchanged(client: TestClient[Any]) -> None:
    """No ``quantiles`` field: each pod has exactly pod, ttft_ms and tpot_ms, at the primary quantile."""
    rows = pod_rows(7, seed=3)
    body = client.post("/v1/predict", json={"pods": rows}).json()
    assert [set(prediction) for prediction in body["predictions"]] == [{"pod", "ttft_ms", "tpot_ms"}] * 7
    asked = client.post("/v1/predict", json={"pods": rows, "quantiles": [0.9]}).json()
    for plain, with_primary in zip(body["predictions"], asked["predictions"], strict=True):
        assert with_primary["quantiles"]["0.9"] == {"ttft_ms": plain["ttft_ms"], "tpot_ms": plain["tpot_ms"]}


def test_asked_quantiles_come_back_per_pod_in_order(client: TestClient[Any]) -> None:
    """Each pod's ``quantiles`` holds the asked ones, keyed as sent, and p50 <= primary <= p99."""
    body = client.post("/v1/predict", json={"pods": pod_rows(7, seed=4), "quantiles": [0.99, 0.5]}).json()
    for prediction in body["predictions"]:
        assert list(prediction["quantiles"]) == ["0.99", "0.5"]
        for target in ("ttft_ms", "tpot_ms"):
            low, high = prediction["quantiles"]["0.5"][target], prediction["quantiles"]["0.99"][target]
            assert 0 < low <= prediction[target] <= high


@pytest.mark.parametrize(
    ("quantiles", "field", "says"),
    [
        ([0.5, 0.8], "quantiles[1]", "0.8 is not served; the model in service serves 0.5, 0.9, 0.95, 0.99"),
        ([0.9, 0.9], "quantiles", "asks for 0.9 more than once"),
        ([0.0], "quantiles[0]", "Expected `float` > 0.0"),
        ([0.5, 1.0], "quantiles[1]", "Expected `float` < 1.0"),
        ([1.5], "quantiles[0]", "Expected `float` < 1.0"),
        ([], "quantiles", "Expected `array` of length >= 1"),
        (["p99"], "quantiles[0]", "Expected `float`, got `str`"),
        ([0.5, 0.9, 0.95, 0.99, 0.999], "quantiles", "5 quantiles asked for; the model in service serves 4"),
    ],
)
def test_bad_quantiles_are_a_422_naming_the_field(
    client: TestClient[Any], quantiles: list[object], field: str, says: str
) -> None:
    """Unknown, repeated, out of (0, 1), empty, mistyped, or more than served: 422 naming the field."""
    answer = client.post("/v1/predict", json={"pods": pod_rows(2, seed=5), "quantiles": quantiles})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert says in answer.json()["detail"]


def test_a_mean_model_refuses_quantiles_by_name(model_dir: Path) -> None:
    """The mean model serves no quantiles: asking is a 422 that says so; not asking answers as always."""
    with TestClient(create_app(Runtime(cpu_settings(model_dir)))) as mean_client:
        wait_ready(mean_client)
        rows = pod_rows(2, seed=6)
        refused = mean_client.post("/v1/predict", json={"pods": rows, "quantiles": [0.5]})
        assert (refused.status_code, refused.json()["field"]) == (422, "quantiles")
        assert refused.json()["error"] == "quantile_not_served"
        assert "serves no quantiles" in refused.json()["detail"]
        answered = mean_client.post("/predict/bulk/strict", json={"requests": rows}).json()["predictions"]
        assert not {"ttft_prediction_bounds", "ttft_uncertainty"} & set(answered[0])
        assert mean_client.get("/status").json()["quantiles"] == []


def test_llmd_routes_give_bounds_and_uncertainty(client: TestClient[Any]) -> None:
    """The router's bulk route answers the primary as before, plus [p50, p99] bounds and a normal sd."""
    rows = pod_rows(7, seed=7)
    ours = client.post("/v1/predict", json={"pods": rows, "quantiles": [0.5, 0.99]}).json()["predictions"]
    bulk = client.post("/predict/bulk/strict", json={"requests": rows}).json()["predictions"]
    one = client.post("/predict", json=rows[0]).json()
    assert one == bulk[0] | {"predicted_at": one["predicted_at"]}
    for mine, theirs in zip(ours, bulk, strict=True):
        assert theirs["quantile"] == 0.9
        for target in ("ttft", "tpot"):
            low, high = mine["quantiles"]["0.5"][f"{target}_ms"], mine["quantiles"]["0.99"][f"{target}_ms"]
            assert theirs[f"{target}_ms"] == mine[f"{target}_ms"]
            assert theirs[f"{target}_prediction_bounds"] == [low, high]
            # The sd of the normal whose p50 and p99 these are: z(0.99) - z(0.5) = 2.3263.
            assert theirs[f"{target}_uncertainty"] == pytest.approx((high - low) / 2.326348, rel=1e-6)


def test_the_served_quantiles_are_listed(client: TestClient[Any]) -> None:
    """``/v1/model`` and ``/status`` list the set; ``/schema`` documents the field."""
    assert client.get("/v1/model").json()["quantiles"] == list(QUANTILES)
    assert client.get("/status").json()["quantiles"] == list(QUANTILES)
    schema = client.get("/schema/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "served quantiles" in body["properties"]["quantiles"]["description"]
    assert "0.5, 0.9, 0.95, 0.99" in schema["info"]["description"]
