"""Request and response shapes of the llm-d latency predictor's HTTP API, for drop-in compatibility.

Field names, limits (1-10,000 rows per bulk call) and status codes follow llm-d's prediction server;
``model_version`` is our addition. Rows ignore unknown fields there, so they do here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from podlatency.schema import PodMetrics

MAX_BULK_ROWS = 10_000

BulkRows = Annotated[list[PodMetrics], msgspec.Meta(min_length=1, max_length=MAX_BULK_ROWS)]
RawBulkRows = Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=MAX_BULK_ROWS)]


class BulkPredictionRequest(msgspec.Struct, frozen=True):
    """``POST /predict/bulk/strict``: every row must be valid."""

    requests: BulkRows


class LenientBulkPredictionRequest(msgspec.Struct, frozen=True):
    """``POST /predict/bulk``: rows are validated one by one; bad rows are reported, not fatal."""

    requests: RawBulkRows


class PredictionResponse(msgspec.Struct, frozen=True):
    """One row's prediction."""

    ttft_ms: float
    tpot_ms: float
    predicted_at: datetime
    model_type: str
    quantile: float | None
    last_model_load: datetime | None
    model_version: str


class BulkPredictionResponse(msgspec.Struct, frozen=True):
    """All rows' predictions, in order."""

    predictions: list[PredictionResponse]
    total_requests: int
    successful_predictions: int
    failed_predictions: int
    processing_time_ms: float


class BulkPredictionError(msgspec.Struct, frozen=True):
    """Why one row of a lenient bulk call was not predicted."""

    index: int
    error: str
    request: Any


class BulkPredictionResponseWithErrors(msgspec.Struct, frozen=True):
    """A lenient bulk call's answer: ``None`` in place of each failed row."""

    predictions: list[PredictionResponse | None]
    errors: list[BulkPredictionError]
    total_requests: int
    successful_predictions: int
    failed_predictions: int
    processing_time_ms: float


class StatusResponse(msgspec.Struct, frozen=True):
    """``GET /status``."""

    is_ready: bool
    model_type: str
    quantile: float | None
    last_model_load: datetime | None
    training_server_url: str | None
    models_exist: dict[str, bool]
    model_version: str | None
    device: str
    not_ready_reason: str | None


class ReloadResponse(msgspec.Struct, frozen=True):
    """``POST /reload``."""

    synced: bool
    loaded: bool
    is_ready: bool
    model_type: str
    quantile: float | None
    last_load_time: datetime | None
    model_version: str | None
