"""The feature schema, request and response structs, and decoding of request bodies.

Features are the llm-d latency predictor's, so a router's rows fit unchanged. The model sees them as
one float32 matrix whose columns are :data:`FEATURE_NAMES`: the raw features, ``pod_type`` as a code,
``uncached_input_tokens`` (the prefill work the prefix cache does not save) and
``uncached_encoder_items`` (the multimodal items the pod's encoder cache does not hold).

The llm-d routes decode leniently, as llm-d's own (pydantic) server does: unknown fields are ignored
and an integral float such as ``900.0`` is an int. ``/v1`` refuses both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from podlatency.errors import InvalidField, MalformedBody, TooManyPods

# Counts above a billion are not a real pod's state; bounding them keeps float32 exact enough.
MAX_COUNT = 1_000_000_000

Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
PodType = Literal["", "prefill", "decode"]

POD_TYPE_CODES: dict[str | None, float] = {"": 0.0, None: 0.0, "prefill": 1.0, "decode": 2.0}

RAW_FEATURES: tuple[str, ...] = (
    "kv_cache_percentage",
    "input_token_length",
    "num_request_waiting",
    "num_request_running",
    "num_tokens_generated",
    "prefix_cache_score",
    "prefill_tokens_in_flight",
    "decode_tokens_in_flight",
    "encoder_input_size",
    "encoder_matched_size",
)
DERIVED_FEATURES: tuple[str, ...] = ("pod_type_code", "uncached_input_tokens", "uncached_encoder_items")
FEATURE_NAMES: tuple[str, ...] = (*RAW_FEATURES, *DERIVED_FEATURES)
TARGETS: tuple[str, ...] = ("ttft", "tpot")


class PodMetrics(msgspec.Struct, frozen=True):
    """One candidate pod's live metrics, as the router sees them; unknown fields are ignored.

    The llm-d-compatible routes use this lenient form, as llm-d's own server does, so a router that
    sends newer fields keeps working. ``encoder_input_size`` counts the prompt's multimodal items (images,
    say) and ``encoder_matched_size`` how many of them the pod's encoder cache likely holds.
    """

    kv_cache_percentage: Fraction
    input_token_length: Count
    num_request_waiting: Count
    num_request_running: Count
    num_tokens_generated: Count
    prefix_cache_score: Fraction
    pod_type: PodType | None = ""  # null is "" (llm-d's server accepts both)
    prefill_tokens_in_flight: Count = 0
    decode_tokens_in_flight: Count = 0
    encoder_input_size: Count = 0
    encoder_matched_size: Count = 0

    def __post_init__(self) -> None:
        if self.encoder_matched_size > self.encoder_input_size:
            # msgspec turns this into a ValidationError at the row's path; decode_json names the field.
            raise ValueError(
                f"`encoder_matched_size` ({self.encoder_matched_size}) must be at most "
                f"encoder_input_size ({self.encoder_input_size})"
            )


class PodFeatures(PodMetrics, frozen=True, forbid_unknown_fields=True):
    """The same metrics, with unknown fields refused (our own ``/v1`` API)."""


class PodRow(PodFeatures, frozen=True, forbid_unknown_fields=True):
    """A ``/v1/predict`` row: the features plus an optional pod id echoed back."""

    pod: str | None = None


Quantile = Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)]
MAX_QUANTILES_PER_REQUEST = 16
QuantileList = Annotated[list[Quantile], msgspec.Meta(min_length=1, max_length=MAX_QUANTILES_PER_REQUEST)]


class PredictRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/predict``: the pods, and the served quantiles to answer besides the primary."""

    pods: Annotated[list[PodRow], msgspec.Meta(min_length=1)]
    quantiles: Annotated[
        QuantileList | None,
        msgspec.Meta(
            description="Optional: served quantiles to answer besides the primary, each pod's under "
            "`quantiles` (GET /v1/model lists the served ones)."
        ),
    ] = None

    def __post_init__(self) -> None:
        if self.quantiles is not None and len(set(self.quantiles)) != len(self.quantiles):
            repeated = next(value for value in self.quantiles if self.quantiles.count(value) > 1)
            raise ValueError(f"`quantiles` asks for {repeated:g} more than once")


class QuantileLatencies(msgspec.Struct, frozen=True):
    """One pod's predicted latencies at one quantile."""

    ttft_ms: float
    tpot_ms: float


class PodPrediction(msgspec.Struct, frozen=True, omit_defaults=True):
    """The predicted latencies for one pod, in the order the pods were sent.

    ``quantiles`` (only when the request asked for some) maps each asked quantile, written as JSON
    writes the number (``"0.99"``), to the latencies at it.
    """

    pod: str | None
    ttft_ms: float
    tpot_ms: float
    quantiles: dict[str, QuantileLatencies] | None = None


class PredictResponse(msgspec.Struct, frozen=True):
    """Answer of ``POST /v1/predict``: one prediction per pod, the model used, and where time went."""

    predictions: list[PodPrediction]
    model_version: str
    timing_ms: dict[str, float]


Latency = Annotated[float, msgspec.Meta(ge=0.0, le=float(MAX_COUNT))]
"""An observed latency in milliseconds (0 = not observed)."""
MAX_SAMPLES_PER_REQUEST = 10_000
ACTUAL_COLUMNS = {"ttft": "actual_ttft_ms", "tpot": "actual_tpot_ms"}
"""Each target's observed-latency field (and column of a samples file)."""


class ObservedSample(PodMetrics, frozen=True, kw_only=True):
    """A pod's metrics and what the request actually took (llm-d's shape; unknown fields ignored).

    ``timestamp`` (RFC3339, as the router sends it) is kept with the row; it does not change learning.
    """

    actual_ttft_ms: Latency
    actual_tpot_ms: Latency
    timestamp: datetime | None = None


class StrictObservedSample(PodFeatures, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The same, with unknown fields refused (our ``/v1`` API)."""

    actual_ttft_ms: Latency
    actual_tpot_ms: Latency
    timestamp: datetime | None = None


class SamplesRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/samples``."""

    samples: Annotated[
        list[StrictObservedSample], msgspec.Meta(min_length=1, max_length=MAX_SAMPLES_PER_REQUEST)
    ]


_PATH_SUFFIX = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
# Errors about one field of an object msgspec reports at the object's path; the field is named in the text.
_FIELD_IN_MESSAGE = re.compile(r"^(?:Object (?:missing required|contains unknown) field )?`(?P<field>\w+)`")


def field_path(error: msgspec.ValidationError) -> str | None:
    """The JSON path of the field a validation error is about, as ``pods[0].input_token_length``."""
    text = str(error)
    match = _PATH_SUFFIX.search(text)
    path = match.group("path") if match else None
    named = _FIELD_IN_MESSAGE.match(text)
    if named is None:
        return path
    return f"{path}.{named.group('field')}" if path else named.group("field")


def decode_json[T](body: bytes, target: type[T], *, prefix: str = "", lax: bool = False) -> T:
    """Decode ``body`` into ``target``, turning msgspec's errors into our client errors.

    ``lax`` accepts what pydantic's default mode does (the llm-d routes): an integral float or a
    numeric string for an int.
    """
    try:
        return msgspec.json.decode(body, type=target, strict=not lax)
    except msgspec.ValidationError as error:
        path = field_path(error)
        where = f"{prefix}{path}" if path else (prefix.rstrip(".") or None)
        message = _PATH_SUFFIX.sub("", str(error))
        raise InvalidField(f"{message} at `{where}`" if where else message, field=where) from None
    except msgspec.DecodeError as error:
        raise MalformedBody(f"request body is not valid JSON: {error}") from None


def decode_predict_request(body: bytes, max_pods: int) -> PredictRequest:
    """Decode and validate a ``/v1/predict`` body; refuse more than ``max_pods`` rows."""
    if not body:
        raise MalformedBody("request body is empty; expected a JSON object with a `pods` list")
    request = decode_json(body, PredictRequest)
    if len(request.pods) > max_pods:
        raise TooManyPods(
            f"{len(request.pods)} pods in one request; this server accepts at most {max_pods}",
            field="pods",
        )
    return request


def feature_matrix(rows: Sequence[PodMetrics]) -> npt.NDArray[np.float32]:
    """Rows -> one C-contiguous float32 matrix with the columns of :data:`FEATURE_NAMES`."""
    matrix = np.empty((len(rows), len(FEATURE_NAMES)), dtype=np.float32)
    if not rows:
        return matrix
    matrix[:, : len(RAW_FEATURES)] = [
        (
            row.kv_cache_percentage,
            row.input_token_length,
            row.num_request_waiting,
            row.num_request_running,
            row.num_tokens_generated,
            row.prefix_cache_score,
            row.prefill_tokens_in_flight,
            row.decode_tokens_in_flight,
            row.encoder_input_size,
            row.encoder_matched_size,
        )
        for row in rows
    ]
    matrix[:, len(RAW_FEATURES)] = [POD_TYPE_CODES[row.pod_type] for row in rows]
    add_derived_columns(matrix)
    return matrix


def add_derived_columns(matrix: npt.NDArray[np.float32]) -> None:
    """Fill ``uncached_input_tokens`` and ``uncached_encoder_items`` in place from the raw columns."""
    column = FEATURE_NAMES.index
    matrix[:, column("uncached_input_tokens")] = matrix[:, column("input_token_length")] * (
        1.0 - matrix[:, column("prefix_cache_score")]
    )
    matrix[:, column("uncached_encoder_items")] = (
        matrix[:, column("encoder_input_size")] - matrix[:, column("encoder_matched_size")]
    )
