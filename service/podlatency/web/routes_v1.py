"""``/v1``: our own prediction API."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt
from litestar import Response, get, post
from litestar.datastructures import State
from litestar.params import RawBody
from litestar.types import Scope

from podlatency.dataplane import PredictionService
from podlatency.schema import PodPrediction, PodRow, PredictRequest, PredictResponse, decode_predict_request
from podlatency.tracing import PhaseRecorder
from podlatency.web.batched import BatchedPrediction
from podlatency.web.errors import JSON
from podlatency.web.openapi import json_body_operation
from podlatency.web.phases import arrival_ns, elapsed_ms, new_recorder, request_phases


def service_of(state: State) -> PredictionService:
    """The app's prediction service."""
    service: PredictionService = state.service
    return service


@post(
    "/v1/predict",
    sync_to_thread=True,
    status_code=200,
    operation_class=json_body_operation(PredictRequest, "One row of live metrics per candidate pod."),
    response_description="One prediction per pod, in request order, with model version and phase timings.",
)
def predict(body: RawBody, scope: Scope, state: State) -> Response[bytes]:
    """Predict TTFT and TPOT for every pod in the request with one call per target (batching off)."""
    service = service_of(state)
    with request_phases(scope, service) as phases:
        with phases.phase("decode"):
            request = decode_predict_request(body, service.settings.max_pods)
        result = service.predict(request.pods, phases)
        with phases.phase("encode"):
            content = encode_predictions(
                request.pods,
                result.by_target["ttft"],
                result.by_target["tpot"],
                model_version=result.model.version,
                scope=scope,
                phases=phases,
            )
        return Response(content, media_type=JSON)


@post(
    "/v1/predict",
    sync_to_thread=False,
    status_code=200,
    operation_class=json_body_operation(PredictRequest, "One row of live metrics per candidate pod."),
    response_description="One prediction per pod, in request order, with model version and phase timings.",
)
def predict_batched(body: RawBody, scope: Scope, state: State) -> Response[bytes]:
    """Predict TTFT and TPOT for every pod, in one call per target shared with concurrent requests.

    With batching on (the default) this is the handler: it runs on the event loop and only queues
    the rows; the answer is sent when their batch is done (:mod:`podlatency.web.batched`).
    """
    service = service_of(state)
    return BatchedPrediction(service, body, new_recorder(scope, service), arrival_ns(scope), state.loop)


def encode_predictions(
    pods: Sequence[PodRow],
    ttft: Sequence[float] | npt.NDArray[np.float64],
    tpot: Sequence[float] | npt.NDArray[np.float64],
    *,
    model_version: str,
    scope: Scope,
    phases: PhaseRecorder,
) -> bytes:
    """A ``/v1/predict``-shaped answer, with the phases timed so far and the total since arrival."""
    ttft_values = ttft.tolist() if isinstance(ttft, np.ndarray) else list(ttft)
    tpot_values = tpot.tolist() if isinstance(tpot, np.ndarray) else list(tpot)
    return msgspec.json.encode(
        PredictResponse(
            predictions=[
                PodPrediction(pod=row.pod, ttft_ms=ttft_ms, tpot_ms=tpot_ms)
                for row, ttft_ms, tpot_ms in zip(pods, ttft_values, tpot_values, strict=True)
            ],
            model_version=model_version,
            timing_ms=phases.milliseconds() | {"total": elapsed_ms(scope)},
        )
    )


@get("/v1/model", sync_to_thread=False)
def model_info(state: State) -> dict[str, object]:
    """Metadata of the model in service."""
    service = service_of(state)
    loaded = service.holder.current()
    return loaded.bundle.metadata() | {"loaded_at": loaded.loaded_at.isoformat(), "device": service.device}
