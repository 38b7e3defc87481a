"""``/v1``: our own prediction API."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt
from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.handlers import ASGIRouteHandler
from litestar.params import RawBody
from litestar.types import Scope

from podlatency.learning.evaluation import model_feature_importance
from podlatency.prediction_service import Predictions, PredictionService, check_quantiles
from podlatency.schema import (
    PodPrediction,
    PodRow,
    PredictRequest,
    PredictResponse,
    QuantileLatencies,
    decode_predict_request,
)
from podlatency.tracing.phase_spans import PhaseRecorder
from podlatency.web.batched import Codec, answer_here, batched_route
from podlatency.web.openapi import PREDICTION_ERRORS, error_responses, json_body_operation
from podlatency.web.phases import elapsed_ms


@functools.cache
def v1_codec(max_pods: int) -> Codec[PredictRequest]:
    """``/v1/predict``'s body and answer."""

    def decode(body: bytes) -> PredictRequest:
        return decode_predict_request(body, max_pods)

    def encode(request: PredictRequest, result: Predictions, scope: Scope, phases: PhaseRecorder) -> bytes:
        return encode_predictions(
            request.pods,
            result.primary("ttft"),
            result.primary("tpot"),
            model_version=result.model.version,
            scope=scope,
            phases=phases,
            quantiles=None if request.quantiles is None else quantile_answers(result, request.quantiles),
        )

    return Codec(decode, _pods, encode)


def _pods(request: PredictRequest) -> Sequence[PodRow]:
    return request.pods


def quantile_answers(result: Predictions, asked: Sequence[float]) -> list[dict[str, QuantileLatencies]]:
    """Per pod, the latencies at each asked quantile, keyed as JSON writes the quantile (``"0.99"``)."""
    check_quantiles(asked, result.model.bundle)
    keys = [repr(quantile) for quantile in asked]
    ttft, tpot = result.at_quantiles("ttft", asked).tolist(), result.at_quantiles("tpot", asked).tolist()
    return [
        {
            key: QuantileLatencies(ttft_ms, tpot_ms)
            for key, ttft_ms, tpot_ms in zip(keys, ttft_row, tpot_row, strict=True)
        }
        for ttft_row, tpot_row in zip(ttft, tpot, strict=True)
    ]


V1_PATH = "/v1/predict"
V1_BODY = json_body_operation(PredictRequest, "One row of live metrics per candidate pod.")
V1_ANSWER = "One prediction per pod, in request order, with model version and phase timings."


@post(
    V1_PATH,
    sync_to_thread=True,
    status_code=200,
    operation_class=V1_BODY,
    response_description=V1_ANSWER,
    responses=PREDICTION_ERRORS,
)
def predict(body: RawBody, scope: Scope, service: NamedDependency[PredictionService]) -> Response[bytes]:
    """Predict TTFT and TPOT for every pod in the request with one call per target (batching off)."""
    return answer_here(service, v1_codec(service.settings.max_pods), body, scope)


def predict_batched(service: PredictionService) -> ASGIRouteHandler:
    """``/v1/predict`` with batching on (the default), queued from the event loop (:mod:`.batched`)."""
    return batched_route(V1_PATH, service, v1_codec(service.settings.max_pods), name="predict_batched")


def encode_predictions(
    pods: Sequence[PodRow],
    ttft: Sequence[float] | npt.NDArray[np.float64],
    tpot: Sequence[float] | npt.NDArray[np.float64],
    *,
    model_version: str,
    scope: Scope,
    phases: PhaseRecorder,
    quantiles: Sequence[dict[str, QuantileLatencies] | None] | None = None,
) -> bytes:
    """A ``/v1/predict``-shaped answer, with the phases timed so far and the total since arrival.

    ``quantiles``: per pod, the latencies at the quantiles the request asked for (:func:`quantile_answers`).
    """
    ttft_values = ttft.tolist() if isinstance(ttft, np.ndarray) else list(ttft)
    tpot_values = tpot.tolist() if isinstance(tpot, np.ndarray) else list(tpot)
    per_pod = [None] * len(pods) if quantiles is None else quantiles
    return msgspec.json.encode(
        PredictResponse(
            predictions=[
                PodPrediction(pod=row.pod, ttft_ms=ttft_ms, tpot_ms=tpot_ms, quantiles=at_quantiles)
                for row, ttft_ms, tpot_ms, at_quantiles in zip(
                    pods, ttft_values, tpot_values, per_pod, strict=True
                )
            ],
            model_version=model_version,
            timing_ms=phases.milliseconds() | {"total": elapsed_ms(scope)},
        )
    )


@get("/v1/model", sync_to_thread=False, responses=error_responses(503))
def model_info(service: NamedDependency[PredictionService]) -> dict[str, object]:
    """Metadata of the model in service, and which engine predicts.

    Among it the features it knows and those it was trained without; ``engine`` is the engine for a
    router's few rows, ``engines`` each engine in use with the fewest rows it takes; in a cluster,
    ``rollout`` is the version the rollout ConfigMap declares beside this one (null outside);
    ``live`` is the model's accuracy on the observed rows a trainer received since it came into
    service (a predictor says it scores none); ``feature_importance`` each feature's share of each
    target's gain.
    """
    loaded = service.holder.current()
    rollout = service.rollout_status() if service.rollout_status is not None else None
    return loaded.bundle.metadata() | {
        "rollout": None if rollout is None else dataclasses.asdict(rollout),
        "live": dataclasses.asdict(service.live_report()),
        "feature_importance": model_feature_importance(loaded.bundle),
        "features_ignored": loaded.bundle.ignored_features(),
        "loaded_at": loaded.loaded_at.isoformat(),
        "device": service.device,
        "engine": loaded.predictor.engine_for(1),
        "engines": loaded.predictor.engines(),
    }
