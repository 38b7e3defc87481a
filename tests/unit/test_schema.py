"""Request validation: every malformed or out-of-range input is a client error naming the field."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from podlatency.errors import InvalidField, MalformedBody, TooManyPods
from podlatency.schema import FEATURE_NAMES, PodMetrics, decode_json, decode_predict_request, feature_matrix

VALID_ROW: dict[str, Any] = {
    "kv_cache_percentage": 0.5,
    "input_token_length": 800,
    "num_request_waiting": 2,
    "num_request_running": 4,
    "num_tokens_generated": 0,
    "prefix_cache_score": 0.25,
}


def body(*rows: dict[str, Any]) -> bytes:
    return json.dumps({"pods": list(rows)}).encode()


def test_valid_request_decodes_with_defaults() -> None:
    """A minimal row decodes, and the optional llm-d fields take their defaults."""
    request = decode_predict_request(body(VALID_ROW | {"pod": "p-1"}), max_pods=8)
    row = request.pods[0]
    assert (row.pod, row.pod_type, row.prefill_tokens_in_flight, row.decode_tokens_in_flight) == (
        "p-1",
        "",
        0,
        0,
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kv_cache_percentage": 1.01}, "pods[0].kv_cache_percentage"),
        ({"prefix_cache_score": -0.1}, "pods[0].prefix_cache_score"),
        ({"num_request_waiting": -1}, "pods[0].num_request_waiting"),
        ({"input_token_length": 12.5}, "pods[0].input_token_length"),
        ({"input_token_length": "800"}, "pods[0].input_token_length"),
        ({"num_request_running": True}, "pods[0].num_request_running"),
        ({"num_tokens_generated": 10**12}, "pods[0].num_tokens_generated"),
        ({"kv_cache_percentage": 1e999}, "pods[0].kv_cache_percentage"),
        ({"pod_type": "router"}, "pods[0].pod_type"),
        ({"pod": 7}, "pods[0].pod"),
        ({"surprise": 1}, "pods[0].surprise"),
    ],
)
def test_invalid_field_is_named(change: dict[str, Any], field: str) -> None:
    """Wrong types, out-of-range values, infinities and unknown fields are 422s naming the field."""
    raw = json.dumps({"pods": [VALID_ROW | change]}).replace(
        '"kv_cache_percentage": Infinity', '"kv_cache_percentage": 1e999'
    )
    with pytest.raises(InvalidField) as caught:
        decode_predict_request(raw.encode(), max_pods=8)
    assert caught.value.status_code == 422
    assert caught.value.field == field


def test_missing_field_is_named() -> None:
    """A missing required feature is a 422 that names it."""
    row = dict(VALID_ROW)
    del row["num_request_running"]
    with pytest.raises(InvalidField) as caught:
        decode_predict_request(body(row), max_pods=8)
    assert "num_request_running" in caught.value.detail


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b'{"pods": [{"kv_cache_percentage": NaN}]}', b"null"])
def test_malformed_bodies_are_client_errors(raw: bytes) -> None:
    """Empty, truncated, non-object and NaN-bearing bodies are 400/422, never anything else."""
    with pytest.raises((MalformedBody, InvalidField)) as caught:
        decode_predict_request(raw, max_pods=8)
    assert caught.value.status_code in {400, 422}


def test_empty_pod_list_is_refused() -> None:
    """A request with no pods is a 422 on `pods`."""
    with pytest.raises(InvalidField) as caught:
        decode_predict_request(body(), max_pods=8)
    assert caught.value.field == "pods"


def test_too_many_pods_is_413() -> None:
    """More pods than the configured maximum is a 413 naming `pods`."""
    with pytest.raises(TooManyPods) as caught:
        decode_predict_request(body(*[VALID_ROW] * 9), max_pods=8)
    assert (caught.value.status_code, caught.value.field) == (413, "pods")


def test_llmd_rows_ignore_unknown_fields() -> None:
    """The llm-d-compatible row type ignores fields it does not know, as llm-d's server does."""
    row = decode_json(json.dumps(VALID_ROW | {"newer_field": 3}).encode(), PodMetrics)
    assert row.input_token_length == 800


def test_feature_matrix_columns_follow_feature_names() -> None:
    """The matrix is float32, C-contiguous, and each column holds the feature its name says."""
    row = decode_json(
        json.dumps(VALID_ROW | {"pod_type": "decode", "decode_tokens_in_flight": 99}).encode(), PodMetrics
    )
    matrix = feature_matrix([row, row])
    assert matrix.dtype == np.float32
    assert matrix.flags.c_contiguous
    values = dict(zip(FEATURE_NAMES, matrix[0].tolist(), strict=True))
    assert values["input_token_length"] == 800
    assert values["decode_tokens_in_flight"] == 99
    assert values["pod_type_code"] == 2
    assert values["uncached_input_tokens"] == pytest.approx(600)
