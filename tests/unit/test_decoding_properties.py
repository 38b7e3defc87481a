"""Property tests of the request decoders (hypothesis): any bytes, any JSON, valid rows.

Whatever arrives, decoding either gives a validated struct or raises one of our client errors (a 4xx);
never anything else, which the HTTP layer would turn into a 500. Valid rows always become a finite
float32 matrix of the right shape.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from podlatency.errors import ClientError
from podlatency.llmd_schema import BulkPredictionRequest, FlushRequest, TrainingDataBulkRequest
from podlatency.schema import (
    FEATURE_NAMES,
    MAX_COUNT,
    RAW_FEATURES,
    PodMetrics,
    PredictRequest,
    SamplesRequest,
    decode_json,
    decode_predict_request,
    feature_matrix,
)

EXAMPLES = settings(max_examples=400, deadline=None)
REQUEST_TYPES: list[type[msgspec.Struct]] = [
    BulkPredictionRequest,
    FlushRequest,
    SamplesRequest,
    TrainingDataBulkRequest,
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=30), children, max_size=8)
    ),
    max_leaves=40,
)
fractions = st.floats(min_value=0.0, max_value=1.0)
counts = st.integers(min_value=0, max_value=MAX_COUNT)
valid_rows = st.fixed_dictionaries(
    {
        "kv_cache_percentage": fractions,
        "input_token_length": counts,
        "num_request_waiting": counts,
        "num_request_running": counts,
        "num_tokens_generated": counts,
        "prefix_cache_score": fractions,
    },
    optional={
        "pod_type": st.sampled_from(["", "prefill", "decode"]),
        "prefill_tokens_in_flight": counts,
        "decode_tokens_in_flight": counts,
    },
).flatmap(
    # Encoder items: the cache holds at most as many as the prompt has.
    lambda row: st.integers(min_value=0, max_value=MAX_COUNT).flatmap(
        lambda items: st.integers(min_value=0, max_value=items).map(
            lambda matched: row | {"encoder_input_size": items, "encoder_matched_size": matched}
        )
    )
)
# Rows with one field replaced by anything at all.
row_fields = [*RAW_FEATURES, "pod_type", "pod", "unknown_field"]
broken_rows = st.tuples(valid_rows, st.sampled_from(row_fields), json_values).map(
    lambda parts: parts[0] | {parts[1]: parts[2]}
)


def outcome(decode: Callable[[], object]) -> object:
    """What decoding gives: a struct, or the client error it raised (anything else propagates)."""
    try:
        return decode()
    except ClientError as error:
        return error


def decode_everything(body: bytes) -> None:
    outcome(lambda: decode_predict_request(body, max_pods=16))
    for request_type in REQUEST_TYPES:
        outcome(functools.partial(decode_json, body, request_type))
        outcome(functools.partial(decode_json, body, request_type, lax=True))


@EXAMPLES
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_a_client_error(body: bytes) -> None:
    """Arbitrary bytes never escape as anything but a client error."""
    decode_everything(body)


@EXAMPLES
@given(json_values)
def test_any_json_decodes_or_raises_a_client_error(value: Any) -> None:
    """Arbitrary JSON documents, bare or under each request's key, never escape as anything else."""
    for wrap in (value, {"pods": value}, {"requests": value}, {"samples": value}, {"entries": value}):
        decode_everything(json.dumps(wrap).encode())


@EXAMPLES
@given(st.lists(broken_rows, min_size=1, max_size=8))
def test_rows_with_any_field_broken_are_refused_by_name_or_accepted(rows: list[dict[str, Any]]) -> None:
    """A row with any field set to anything is refused with the field named, or is a valid row."""
    result = outcome(lambda: decode_predict_request(json.dumps({"pods": rows}).encode(), max_pods=16))
    if isinstance(result, ClientError):
        assert result.status_code in (400, 413, 422)
        assert result.status_code != 422 or str(result.field).startswith("pods[")
        return
    assert isinstance(result, PredictRequest)
    matrix = feature_matrix(result.pods)
    assert matrix.shape == (len(rows), len(FEATURE_NAMES))
    assert np.isfinite(matrix).all()


@EXAMPLES
@given(st.lists(valid_rows, min_size=1, max_size=32))
def test_valid_rows_become_a_finite_float32_matrix(rows: list[dict[str, Any]]) -> None:
    """Every valid row is accepted by both the strict and the lenient decoders, with the same features."""
    strict = decode_predict_request(json.dumps({"pods": rows}).encode(), max_pods=32).pods
    lenient = decode_json(json.dumps({"requests": rows}).encode(), BulkPredictionRequest, lax=True).requests
    matrix = feature_matrix(strict)
    assert matrix.dtype == np.float32
    assert matrix.shape == (len(rows), len(FEATURE_NAMES))
    assert np.isfinite(matrix).all()
    assert np.array_equal(matrix, feature_matrix([PodMetrics(**vars_of(row)) for row in lenient]))


def vars_of(row: PodMetrics) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__struct_fields__}
