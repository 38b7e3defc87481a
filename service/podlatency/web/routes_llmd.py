"""llm-d latency predictor compatible routes, so an existing router can point at us unchanged.

Thin adapters over the same core as ``/v1/predict``: decode, predict the batch once, encode. With
batching on, ``/predict`` and ``/predict/bulk/strict`` queue their rows from the event loop as
``/v1/predict`` does; ``/predict/bulk`` (rows that fail alone) waits for its batch on a worker thread.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.handlers import ASGIRouteHandler
from litestar.params import RawBody
from litestar.types import Scope

from podlatency import llmd_schema as llmd
from podlatency.bundle import ModelBundle
from podlatency.errors import ModelLoadError, PodlatencyError, Unavailable
from podlatency.prediction_service import MODEL_TYPE, Predictions, PredictionService, reported_quantile
from podlatency.schema import PodMetrics, decode_json
from podlatency.tracing.phase_spans import PhaseRecorder
from podlatency.web.batched import Codec, answer_here, batched_route
from podlatency.web.errors import JSON
from podlatency.web.guards import require_token
from podlatency.web.openapi import PREDICTION_ERRORS, error_responses, json_body_operation
from podlatency.web.phases import elapsed_ms, request_phases


def _prediction_rows(result: Predictions) -> list[llmd.PredictionResponse]:
    bundle = result.model.bundle
    now = datetime.now(UTC)
    quantile = result.model.reported_quantile
    several = len(bundle.quantiles) > 1
    ttft_spread = spread(result, "ttft") if several else itertools.repeat(NO_SPREAD)
    tpot_spread = spread(result, "tpot") if several else itertools.repeat(NO_SPREAD)
    return [
        llmd.PredictionResponse(
            ttft_ms=ttft_ms,
            tpot_ms=tpot_ms,
            predicted_at=now,
            model_type=MODEL_TYPE,
            objective_type=bundle.objective,
            quantile=quantile,
            last_model_load=result.model.loaded_at,
            model_version=bundle.version,
            ttft_uncertainty=ttft_sd,
            tpot_uncertainty=tpot_sd,
            ttft_prediction_bounds=ttft_bounds,
            tpot_prediction_bounds=tpot_bounds,
        )
        # Not strict: without several quantiles, the spreads repeat "none" for every row.
        for ttft_ms, tpot_ms, (ttft_bounds, ttft_sd), (tpot_bounds, tpot_sd) in zip(
            result.primary("ttft").tolist(),
            result.primary("tpot").tolist(),
            ttft_spread,
            tpot_spread,
            strict=False,
        )
    ]


Spread = tuple[tuple[float, float] | None, float | None]
NO_SPREAD: Spread = (None, None)
"""A row's bounds and uncertainty from a model of one quantile, or the mean: none (left out of the answer)."""


def spread(result: Predictions, target: str) -> list[Spread]:
    """Per row, the latencies at the lowest and highest served quantiles, and their normal-equivalent spread.

    The spread is the standard deviation of the normal distribution with those two quantiles:
    ``(high - low) / (z(highest) - z(lowest))``, in ms, as llm-d's ``*_uncertainty`` is a standard deviation.
    """
    quantiles = result.model.bundle.quantiles
    values = result.by_target[target]
    low, high = values[:, 0], values[:, -1]
    z_width = NORMAL.inv_cdf(quantiles[-1]) - NORMAL.inv_cdf(quantiles[0])
    return [
        ((low_ms, high_ms), sd_ms)
        for low_ms, high_ms, sd_ms in zip(
            low.tolist(), high.tolist(), ((high - low) / z_width).tolist(), strict=True
        )
    ]


NORMAL = statistics.NormalDist()


def _decode_one(body: bytes) -> Sequence[PodMetrics]:
    return [decode_json(body, PodMetrics, lax=True)]


def _same_rows(rows: Sequence[PodMetrics]) -> Sequence[PodMetrics]:
    return rows


def _encode_one(
    rows: Sequence[PodMetrics], result: Predictions, scope: Scope, phases: PhaseRecorder
) -> bytes:
    return msgspec.json.encode(_prediction_rows(result)[0])


def _decode_bulk(body: bytes) -> Sequence[PodMetrics]:
    return decode_json(body, llmd.BulkPredictionRequest, lax=True).requests


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


ONE_ROW = Codec(_decode_one, _same_rows, _encode_one)
BULK_STRICT = Codec(_decode_bulk, _same_rows, _encode_bulk_strict)

ONE_ROW_BODY = json_body_operation(PodMetrics, "One pod's live metrics.")
BULK_STRICT_BODY = json_body_operation(
    llmd.BulkPredictionRequest, "1-10,000 rows; any invalid row fails all."
)


@post(
    "/predict",
    sync_to_thread=True,
    status_code=200,
    operation_class=ONE_ROW_BODY,
    responses=PREDICTION_ERRORS,
)
def predict_one(body: RawBody, scope: Scope, service: NamedDependency[PredictionService]) -> Response[bytes]:
    """llm-d ``/predict``: one row in, one prediction out (batching off)."""
    return answer_here(service, ONE_ROW, body, scope)


def predict_one_batched(service: PredictionService) -> ASGIRouteHandler:
    """llm-d ``/predict``: one row in, one prediction out, queued from the event loop (batching on)."""
    return batched_route("/predict", service, ONE_ROW, name="predict_one_batched")


@post(
    "/predict/bulk/strict",
    sync_to_thread=True,
    status_code=200,
    operation_class=BULK_STRICT_BODY,
    responses=PREDICTION_ERRORS,
)
def predict_bulk_strict(
    body: RawBody, scope: Scope, service: NamedDependency[PredictionService]
) -> Response[bytes]:
    """llm-d ``/predict/bulk/strict``: all rows or none (422 naming the first invalid row); batching off."""
    return answer_here(service, BULK_STRICT, body, scope)


def predict_bulk_strict_batched(service: PredictionService) -> ASGIRouteHandler:
    """llm-d ``/predict/bulk/strict``, queued from the event loop (batching on)."""
    return batched_route("/predict/bulk/strict", service, BULK_STRICT, name="predict_bulk_strict_batched")


@post(
    "/predict/bulk",
    sync_to_thread=True,
    status_code=200,
    operation_class=json_body_operation(
        llmd.BulkPredictionRequest,
        "1-10,000 rows; an invalid body is a 422, rows that fail to predict are listed.",
    ),
    responses=PREDICTION_ERRORS,
)
def predict_bulk(body: RawBody, scope: Scope, service: NamedDependency[PredictionService]) -> Response[bytes]:
    """llm-d ``/predict/bulk``: one batch; ``errors`` lists rows that could not be predicted.

    As in llm-d, a body that fails validation is a 422 for the whole request.
    """
    with request_phases(scope, service) as phases:
        with phases.phase("decode"):
            rows = _decode_bulk(body)
        predictions: list[llmd.PredictionResponse | None] = [None] * len(rows)
        errors: list[llmd.BulkPredictionError] = []
        try:
            result = service.predict(rows, phases)
        except Unavailable:
            raise  # the whole request is answered 503 with Retry-After
        except PodlatencyError as error:
            errors = [
                llmd.BulkPredictionError(index, f"batch prediction failed: {error.detail}", row)
                for index, row in enumerate(rows)
            ]
        else:
            predictions = list(_prediction_rows(result))
        with phases.phase("encode"):
            succeeded = sum(prediction is not None for prediction in predictions)
            content = msgspec.json.encode(
                llmd.BulkPredictionResponseWithErrors(
                    predictions=predictions,
                    errors=errors,
                    total_requests=len(predictions),
                    successful_predictions=succeeded,
                    failed_predictions=len(predictions) - succeeded,
                    processing_time_ms=elapsed_ms(scope),
                )
            )
        return Response(content, media_type=JSON)


@get("/status", sync_to_thread=False)
def status(service: NamedDependency[PredictionService]) -> llmd.StatusResponse:
    """llm-d ``/status``: readiness and the model in service (the router polls it every 60 s)."""
    model = service.holder.current_or_none()
    stored = service.registry.active_version() is not None
    return llmd.StatusResponse(
        is_ready=model is not None,
        model_type=MODEL_TYPE,
        objective_type=objective_of(service, model.bundle if model else None),
        quantile=reported_quantile(model.bundle if model else None, service.settings.quantile_alpha),
        last_model_load=model.loaded_at if model else None,
        training_server_url=None,
        models_exist={"ttft_model": stored, "tpot_model": stored},
        ensemble_active=False,
        model_version=model.version if model else None,
        device=service.device,
        engine=model.predictor.engine_for(1) if model else None,
        not_ready_reason=None if model else service.holder.not_ready_reason,
        quantiles=list(model.bundle.quantiles) if model else [],
        rollout=service.rollout_status() if service.rollout_status is not None else None,
        live=service.live_report(),
    )


def objective_of(service: PredictionService, bundle: ModelBundle | None) -> str:
    """The objective of the model in service; before one is, the one it will have.

    That is the setting's, or with ``auto`` the stored active version's (``mean`` for the embedded default).
    """
    if bundle is not None:
        return bundle.objective
    if service.settings.objective != "auto":
        return service.settings.objective
    version = service.registry.active_version()
    if version is not None:
        with contextlib.suppress(ModelLoadError):
            return str(service.registry.metadata(version).get("objective", "mean"))
    return "mean"


@get("/", sync_to_thread=False)
def root(service: NamedDependency[PredictionService]) -> llmd.RootResponse:
    """What this server is: llm-d's self-description, plus the roles this process serves."""
    model = service.holder.current_or_none()
    bundle = model.bundle if model else None
    objective = objective_of(service, bundle)
    quantile = reported_quantile(bundle, service.settings.quantile_alpha)
    role = service.settings.role
    return llmd.RootResponse(
        message="podlatency is running: per-pod TTFT and TPOT predictions for LLM request routing.",
        description=(
            "Predicting mean TTFT and TPOT latencies"
            if objective == "mean"
            else f"Predicting the {quantile:.0%} quantile of TTFT and TPOT latencies"
        ),
        model_type=MODEL_TYPE,
        objective_type=objective,
        quantile=quantile,
        is_ready=model is not None,
        roles=["predictor", "trainer"] if role == "both" else [role],
        model_version=model.version if model else None,
    )


@post(
    "/reload",
    sync_to_thread=True,
    status_code=200,
    guards=[require_token],
    responses=error_responses(401, 500),
)
def reload(service: NamedDependency[PredictionService]) -> llmd.ReloadResponse:
    """llm-d ``/reload``: load the model folder's active version (the current one serves on failure)."""
    loaded = service.reload()
    return llmd.ReloadResponse(
        synced=False,
        loaded=True,
        is_ready=True,
        model_type=MODEL_TYPE,
        objective_type=loaded.bundle.objective,
        quantile=reported_quantile(loaded.bundle, service.settings.quantile_alpha),
        last_load_time=loaded.loaded_at,
        model_version=loaded.version,
    )
