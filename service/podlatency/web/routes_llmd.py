"""llm-d latency predictor compatible routes, so an existing router can point at us unchanged.

Thin adapters over the same core as ``/v1/predict``: decode, predict the batch once, encode. With
batching on, ``/predict`` and ``/predict/bulk/strict`` queue their rows from the event loop as
``/v1/predict`` does; ``/predict/bulk`` (rows that fail alone) waits for its batch on a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
from litestar import Response, get, post
from litestar.datastructures import State
from litestar.params import RawBody
from litestar.types import Scope

from podlatency import llmd_schema as llmd
from podlatency.dataplane import Predictions
from podlatency.errors import ClientError, PodlatencyError
from podlatency.schema import PodMetrics, decode_json
from podlatency.tracing import PhaseRecorder
from podlatency.web.batched import Codec, answer_from_batch, answer_here
from podlatency.web.errors import JSON
from podlatency.web.guards import require_token
from podlatency.web.openapi import json_body_operation
from podlatency.web.phases import elapsed_ms, request_phases
from podlatency.web.routes_v1 import service_of

MODEL_TYPE = "xgboost"


def _prediction_rows(result: Predictions) -> list[llmd.PredictionResponse]:
    bundle = result.model.bundle
    now = datetime.now(UTC)
    return [
        llmd.PredictionResponse(
            ttft_ms=ttft_ms,
            tpot_ms=tpot_ms,
            predicted_at=now,
            model_type=MODEL_TYPE,
            quantile=bundle.quantile_alpha,
            last_model_load=result.model.loaded_at,
            model_version=bundle.version,
        )
        for ttft_ms, tpot_ms in zip(
            result.by_target["ttft"].tolist(), result.by_target["tpot"].tolist(), strict=True
        )
    ]


def _decode_one(body: bytes) -> Sequence[PodMetrics]:
    return [decode_json(body, PodMetrics)]


def _encode_one(
    rows: Sequence[PodMetrics], result: Predictions, scope: Scope, phases: PhaseRecorder
) -> bytes:
    return msgspec.json.encode(_prediction_rows(result)[0])


def _decode_bulk_strict(body: bytes) -> Sequence[PodMetrics]:
    return decode_json(body, llmd.BulkPredictionRequest).requests


def _encode_bulk_strict(
    rows: Sequence[PodMetrics], result: Predictions, scope: Scope, phases: PhaseRecorder
) -> bytes:
    predictions = _prediction_rows(result)
    return msgspec.json.encode(
        llmd.BulkPredictionResponse(
            predictions=predictions,
            total_requests=len(predictions),
            successful_predictions=len(predictions),
            failed_predictions=0,
            processing_time_ms=elapsed_ms(scope),
        )
    )


ONE_ROW = Codec(_decode_one, _encode_one)
BULK_STRICT = Codec(_decode_bulk_strict, _encode_bulk_strict)

ONE_ROW_BODY = json_body_operation(PodMetrics, "One pod's live metrics.")
BULK_STRICT_BODY = json_body_operation(
    llmd.BulkPredictionRequest, "1-10,000 rows; any invalid row fails all."
)


@post("/predict", sync_to_thread=True, status_code=200, operation_class=ONE_ROW_BODY)
def predict_one(body: RawBody, scope: Scope, state: State) -> Response[bytes]:
    """llm-d ``/predict``: one row in, one prediction out (batching off)."""
    return answer_here(service_of(state), ONE_ROW, body, scope)


@post("/predict", sync_to_thread=False, status_code=200, operation_class=ONE_ROW_BODY)
def predict_one_batched(body: RawBody, scope: Scope, state: State) -> Response[bytes]:
    """llm-d ``/predict``: one row in, one prediction out, queued from the event loop (batching on)."""
    return answer_from_batch(service_of(state), ONE_ROW, body, scope, state.loop)


@post("/predict/bulk/strict", sync_to_thread=True, status_code=200, operation_class=BULK_STRICT_BODY)
def predict_bulk_strict(body: RawBody, scope: Scope, state: State) -> Response[bytes]:
    """llm-d ``/predict/bulk/strict``: all rows or none (422 naming the first invalid row); batching off."""
    return answer_here(service_of(state), BULK_STRICT, body, scope)


@post("/predict/bulk/strict", sync_to_thread=False, status_code=200, operation_class=BULK_STRICT_BODY)
def predict_bulk_strict_batched(body: RawBody, scope: Scope, state: State) -> Response[bytes]:
    """llm-d ``/predict/bulk/strict``, queued from the event loop (batching on)."""
    return answer_from_batch(service_of(state), BULK_STRICT, body, scope, state.loop)


@post(
    "/predict/bulk",
    sync_to_thread=True,
    status_code=200,
    operation_class=json_body_operation(
        llmd.BulkPredictionRequest, "1-10,000 rows; invalid rows are reported."
    ),
)
def predict_bulk(body: RawBody, scope: Scope, state: State) -> Response[bytes]:
    """llm-d ``/predict/bulk``: valid rows are predicted in one batch, invalid ones reported by index."""
    service = service_of(state)
    with request_phases(scope, service) as phases:
        with phases.phase("decode"):
            request = decode_json(body, llmd.LenientBulkPredictionRequest)
            valid_rows: list[PodMetrics] = []
            valid_indices: list[int] = []
            errors: list[llmd.BulkPredictionError] = []
            for index, raw_row in enumerate(request.requests):
                try:
                    valid_rows.append(decode_json(raw_row, PodMetrics, prefix=f"requests[{index}]."))
                    valid_indices.append(index)
                except ClientError as error:
                    errors.append(llmd.BulkPredictionError(index, error.detail, msgspec.json.decode(raw_row)))
        predictions: list[llmd.PredictionResponse | None] = [None] * len(request.requests)
        if valid_rows:
            try:
                result = service.predict(valid_rows, phases)
            except PodlatencyError as error:
                if error.status_code == 503:
                    raise
                errors.extend(
                    llmd.BulkPredictionError(index, f"batch prediction failed: {error.detail}", None)
                    for index in valid_indices
                )
            else:
                for index, prediction in zip(valid_indices, _prediction_rows(result), strict=True):
                    predictions[index] = prediction
        with phases.phase("encode"):
            succeeded = sum(prediction is not None for prediction in predictions)
            content = msgspec.json.encode(
                llmd.BulkPredictionResponseWithErrors(
                    predictions=predictions,
                    errors=sorted(errors, key=lambda error: error.index),
                    total_requests=len(predictions),
                    successful_predictions=succeeded,
                    failed_predictions=len(predictions) - succeeded,
                    processing_time_ms=elapsed_ms(scope),
                )
            )
        return Response(content, media_type=JSON)


@get("/status", sync_to_thread=False)
def status(state: State) -> llmd.StatusResponse:
    """llm-d ``/status``: readiness and the model in service."""
    service = service_of(state)
    model = service.holder.current_or_none()
    stored = service.registry.active_version()
    return llmd.StatusResponse(
        is_ready=model is not None,
        model_type=MODEL_TYPE,
        quantile=model.bundle.quantile_alpha if model else None,
        last_model_load=model.loaded_at if model else None,
        training_server_url=None,
        models_exist={"ttft_model": stored is not None, "tpot_model": stored is not None},
        model_version=model.version if model else None,
        device=service.device,
        not_ready_reason=None if model else service.holder.not_ready_reason,
    )


@post("/reload", sync_to_thread=True, status_code=200, guards=[require_token])
def reload(state: State) -> llmd.ReloadResponse:
    """llm-d ``/reload``: load the model folder's active version (the current one serves on failure)."""
    loaded = service_of(state).reload()
    return llmd.ReloadResponse(
        synced=False,
        loaded=True,
        is_ready=True,
        model_type=MODEL_TYPE,
        quantile=loaded.bundle.quantile_alpha,
        last_load_time=loaded.loaded_at,
        model_version=loaded.version,
    )
