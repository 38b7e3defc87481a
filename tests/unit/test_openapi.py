"""The served OpenAPI document: offline at /schema, and every error answer documented with its body."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from podlatency.runtime import Runtime
from podlatency.web.app import create_app
from tests.unit.test_app import cpu_settings


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(Runtime(cpu_settings(tmp_path)), load_model=False)) as test_client:
        yield test_client


def test_schema_is_the_document_itself_with_nothing_fetched_from_elsewhere(client: TestClient[Any]) -> None:
    """/schema answers the OpenAPI JSON (a UI would load scripts from a CDN, blank in a closed cluster)."""
    response = client.get("/schema")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")
    assert "<script" not in response.text
    assert response.json() == client.get("/schema/openapi.json").json()
    assert client.get("/schema/openapi.yaml").text.startswith(("info:", "openapi:", "components:"))


def test_error_answers_are_documented_with_the_error_body(client: TestClient[Any]) -> None:
    """Prediction, sample and model routes list their 4xx/5xx answers, each with the error body."""
    schema = client.get("/schema/openapi.json").json()
    paths = schema["paths"]
    expected = {
        ("post", "/v1/predict"): {"400", "413", "422", "503"},
        ("post", "/predict/bulk/strict"): {"400", "413", "422", "503"},
        ("post", "/v1/samples"): {"400", "401", "413", "422", "503"},
        ("get", "/v1/models/{version}/bundle"): {"400", "404"},
        ("get", "/model/{name}/info"): {"400", "404"},
        ("get", "/readyz"): {"503"},
        ("get", "/model/export"): {"501"},
    }
    for (method, path), codes in expected.items():
        responses = paths[path][method]["responses"]
        assert {code for code in responses if code >= "400"} == codes, path
        for code in codes:
            content = responses[code]["content"]["application/json"]["schema"]
            assert content == {"$ref": "#/components/schemas/ErrorBody"}, (path, code)
    body = schema["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"error", "detail"}


def test_a_malformed_version_is_400_and_an_unknown_one_404(client: TestClient[Any]) -> None:
    """What the bundle route documents is what it answers."""
    malformed = client.get("/v1/models/not-a-version/bundle")
    assert malformed.status_code == 400
    assert malformed.json()["error"]
    unknown = client.get("/v1/models/0123456789abcdef/bundle")
    assert (unknown.status_code, unknown.json()["field"]) == (404, "version")
