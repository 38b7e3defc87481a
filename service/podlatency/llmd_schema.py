"""Request and response shapes of the llm-d latency predictor's HTTP API, for drop-in compatibility.

Field names, limits (1-10,000 rows per bulk call) and status codes follow llm-d's prediction and
training servers; ``model_version`` is our addition. Rows ignore unknown fields there, so they do here,
and are decoded leniently (an integral float is an int), as pydantic does.

The llm-d router's Go client decodes these answers strictly: every time is RFC3339 with a zone (or
null), and every number it reads (``quantile`` among them) is a number, never null.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from podlatency.learning.live_accuracy import LiveReport
from podlatency.prediction_service import RolloutStatus
from podlatency.schema import MAX_SAMPLES_PER_REQUEST, ObservedSample, PodMetrics

MAX_BULK_ROWS = 10_000

BulkRows = Annotated[list[PodMetrics], msgspec.Meta(min_length=1, max_length=MAX_BULK_ROWS)]


class BulkPredictionRequest(msgspec.Struct, frozen=True):
    """``POST /predict/bulk/strict`` and ``/predict/bulk``: a body that fails validation is a 422 whole."""

    requests: BulkRows


class PredictionResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """One row's prediction.

    From a model serving several quantiles, also the fields the Go client declares and llm-d's
    predictor leaves out: ``*_prediction_bounds``, the latencies at the lowest and highest served
    quantiles (``[p50, p99]`` by default), and ``*_uncertainty``, the standard deviation in ms of the
    normal distribution with those two quantiles (docs/llm-d-router.md, "Bounds and uncertainty").
    Absent otherwise, which the Go client reads as zeros.
    """

    ttft_ms: float
    tpot_ms: float
    predicted_at: datetime
    model_type: str
    objective_type: str
    quantile: float
    last_model_load: datetime | None
    model_version: str
    ttft_uncertainty: float | None = None
    tpot_uncertainty: float | None = None
    ttft_prediction_bounds: tuple[float, float] | None = None
    tpot_prediction_bounds: tuple[float, float] | None = None


class BulkPredictionResponse(msgspec.Struct, frozen=True):
    """All rows' predictions, in order."""

    predictions: list[PredictionResponse]
    total_requests: int
    successful_predictions: int
    failed_predictions: int
    processing_time_ms: float


class BulkPredictionError(msgspec.Struct, frozen=True):
    """Why one row of a ``/predict/bulk`` call was not predicted."""

    index: int
    error: str
    request: PodMetrics


class BulkPredictionResponseWithErrors(msgspec.Struct, frozen=True):
    """A lenient bulk call's answer: ``None`` in place of each failed row."""

    predictions: list[PredictionResponse | None]
    errors: list[BulkPredictionError]
    total_requests: int
    successful_predictions: int
    failed_predictions: int
    processing_time_ms: float


class TrainingDataBulkRequest(msgspec.Struct, frozen=True):
    """Body of llm-d's ``POST /add_training_data_bulk``."""

    entries: Annotated[list[ObservedSample], msgspec.Meta(min_length=1, max_length=MAX_SAMPLES_PER_REQUEST)]


class StatusResponse(msgspec.Struct, frozen=True):
    """``GET /status``, polled by the router every 60 s (a mean model reports the configured quantile)."""

    is_ready: bool
    model_type: str
    objective_type: str
    quantile: float
    last_model_load: datetime | None
    training_server_url: str | None
    models_exist: dict[str, bool]
    ensemble_active: bool
    model_version: str | None
    device: str
    engine: str | None
    """Which engine predicts a router's few rows: compiled, xgboost or xgboost-gpu (null while none)."""
    not_ready_reason: str | None
    quantiles: list[float] = msgspec.field(default_factory=list)
    """The quantiles the model in service serves (none for a mean model, or while none is in service)."""
    rollout: RolloutStatus | None = None
    """In a cluster: the version the rollout ConfigMap declares beside the one served (null outside)."""
    live: LiveReport | None = None
    """The serving model's accuracy on observed rows (a trainer's; a predictor says it scores none)."""


class ModelDownloadInfo(msgspec.Struct, frozen=True):
    """``GET /model/download/info``: the router's other 60 s poll, on the training URL."""

    model_type: str
    objective_type: str
    quantile: float
    model_status: dict[str, bool]
    available_endpoints: dict[str, dict[str, str]]
    model_version: str | None


class RootResponse(msgspec.Struct, frozen=True):
    """``GET /``: what this server is."""

    message: str
    description: str
    model_type: str
    objective_type: str
    quantile: float
    is_ready: bool
    roles: list[str]
    model_version: str | None


class ReloadResponse(msgspec.Struct, frozen=True):
    """``POST /reload``."""

    synced: bool
    loaded: bool
    is_ready: bool
    model_type: str
    objective_type: str
    quantile: float
    last_load_time: datetime | None
    model_version: str | None


class FlushRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /flush``: what to forget (everything, by default)."""

    flush_training_data: bool = True
    flush_test_data: bool = True
    flush_metrics: bool = True
    reason: str | None = None


class FlushResponse(msgspec.Struct, frozen=True):
    """What ``POST /flush`` forgot."""

    success: bool
    flushed_at: datetime
    reason: str | None
    ttft_training_samples_flushed: int
    tpot_training_samples_flushed: int
    ttft_test_samples_flushed: int
    tpot_test_samples_flushed: int
    metrics_cleared: bool
    message: str
