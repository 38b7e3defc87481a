"""``/seed/``: the seed post's four endpoint designs, reproduced for the load comparison.

Each takes the same body as ``/v1/predict`` and answers in the same shape, from the same model, so
Locust can drive them all alike. What differs is only how each runs the work:

- ``to-thread``: async handler, per pod ``asyncio.create_task(asyncio.to_thread(...))``, then
  ``asyncio.gather`` (the post's original);
- ``thread-pool``: sync handler, a new ``ThreadPoolExecutor(max_workers=10)`` per request,
  ``executor.map`` over the pods (its solution 1);
- ``dedicated-pool``: async handler, one long-lived 16-worker pool, ``loop.run_in_executor`` per pod,
  ``gather`` (its solution 2);
- ``batch``: async handler, one DataFrame for all pods and one predict per target, on the event loop
  (its solution 3).

Per pod, the traces show ``queue_wait`` (submitted until a thread picked it up) and ``predict_one``
(its run), besides the usual phases.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from litestar import Response, post
from litestar.di import NamedDependency
from litestar.params import RawBody
from litestar.types import Scope

from measure.seed_designs.models import PodResult, SeedDesigns, SeedModel, feature_dict
from podlatency.prediction_service import PredictionService
from podlatency.schema import PredictRequest, decode_predict_request
from podlatency.tracing.phase_spans import PhaseRecorder
from podlatency.web.errors import JSON
from podlatency.web.openapi import PREDICTION_ERRORS, json_body_operation
from podlatency.web.phases import request_phases
from podlatency.web.routes_v1 import encode_predictions

PER_REQUEST_POOL_WORKERS = 10

_BODY = json_body_operation(PredictRequest, "Same body as /v1/predict.")


def _prepare(
    body: bytes, service: PredictionService, seed_designs: SeedDesigns, phases: PhaseRecorder
) -> tuple[PredictRequest, SeedModel, str]:
    with phases.phase("decode"):
        request = decode_predict_request(body, service.settings.max_pods)
    model = service.holder.current()
    phases.attributes |= {"podlatency.pods": len(request.pods), "podlatency.model_version": model.version}
    return request, seed_designs.models.for_model(model), model.version


def _record_pods(phases: PhaseRecorder, submitted_ns: int, results: Sequence[PodResult]) -> None:
    for index, result in enumerate(results):
        attributes = {"podlatency.pod_index": index}
        phases.record("queue_wait", submitted_ns, result.started_ns, attributes=attributes)
        phases.record("predict_one", result.started_ns, result.ended_ns, attributes=attributes)


def _answer(
    request: PredictRequest, results: Sequence[PodResult], version: str, scope: Scope, phases: PhaseRecorder
) -> Response[bytes]:
    with phases.phase("encode"):
        content = encode_predictions(
            request.pods,
            [result.ttft_ms for result in results],
            [result.tpot_ms for result in results],
            model_version=version,
            scope=scope,
            phases=phases,
        )
    return Response(content, media_type=JSON)


@post("/seed/to-thread", status_code=200, operation_class=_BODY, responses=PREDICTION_ERRORS)
async def to_thread(
    body: RawBody,
    scope: Scope,
    service: NamedDependency[PredictionService],
    seed_designs: NamedDependency[SeedDesigns],
) -> Response[bytes]:
    """The post's original: a task per pod around ``asyncio.to_thread``, then ``gather``."""
    with request_phases(scope, service) as phases:
        request, seed_model, version = _prepare(body, service, seed_designs, phases)
        rows = [feature_dict(row) for row in request.pods]
        submitted_ns = time.time_ns()
        tasks = [asyncio.create_task(asyncio.to_thread(seed_model.predict_one, row)) for row in rows]
        results = await asyncio.gather(*tasks)
        phases.record("gather", submitted_ns, time.time_ns())
        _record_pods(phases, submitted_ns, results)
        return _answer(request, results, version, scope, phases)


@post(
    "/seed/thread-pool",
    sync_to_thread=True,
    status_code=200,
    operation_class=_BODY,
    responses=PREDICTION_ERRORS,
)
def thread_pool(
    body: RawBody,
    scope: Scope,
    service: NamedDependency[PredictionService],
    seed_designs: NamedDependency[SeedDesigns],
) -> Response[bytes]:
    """Solution 1: a sync handler with a fresh ``ThreadPoolExecutor(max_workers=10)`` per request."""
    with request_phases(scope, service) as phases:
        request, seed_model, version = _prepare(body, service, seed_designs, phases)
        rows = [feature_dict(row) for row in request.pods]
        submitted_ns = time.time_ns()
        with ThreadPoolExecutor(max_workers=PER_REQUEST_POOL_WORKERS) as executor:
            results = list(executor.map(seed_model.predict_one, rows))
        phases.record("pool_map", submitted_ns, time.time_ns())
        _record_pods(phases, submitted_ns, results)
        return _answer(request, results, version, scope, phases)


@post("/seed/dedicated-pool", status_code=200, operation_class=_BODY, responses=PREDICTION_ERRORS)
async def dedicated_pool(
    body: RawBody,
    scope: Scope,
    service: NamedDependency[PredictionService],
    seed_designs: NamedDependency[SeedDesigns],
) -> Response[bytes]:
    """Solution 2: one long-lived 16-worker pool, ``run_in_executor`` per pod, then ``gather``."""
    with request_phases(scope, service) as phases:
        request, seed_model, version = _prepare(body, service, seed_designs, phases)
        rows = [feature_dict(row) for row in request.pods]
        loop = asyncio.get_running_loop()
        pool = seed_designs.dedicated_pool
        submitted_ns = time.time_ns()
        futures = [loop.run_in_executor(pool, seed_model.predict_one, row) for row in rows]
        results = await asyncio.gather(*futures)
        phases.record("gather", submitted_ns, time.time_ns())
        _record_pods(phases, submitted_ns, results)
        return _answer(request, results, version, scope, phases)


@post("/seed/batch", status_code=200, operation_class=_BODY, responses=PREDICTION_ERRORS)
async def batch(
    body: RawBody,
    scope: Scope,
    service: NamedDependency[PredictionService],
    seed_designs: NamedDependency[SeedDesigns],
) -> Response[bytes]:
    """Solution 3: one DataFrame for all pods, one predict per target, run on the event loop."""
    with request_phases(scope, service) as phases:
        request, seed_model, version = _prepare(body, service, seed_designs, phases)
        with phases.phase("frame"):
            matrix = seed_model.frame([feature_dict(row) for row in request.pods])
        predictions = {}
        for target in ("ttft", "tpot"):
            with phases.phase(f"predict_{target}"):
                predictions[target] = seed_model.predict_frame(target, matrix)
        with phases.phase("encode"):
            content = encode_predictions(
                request.pods,
                predictions["ttft"],
                predictions["tpot"],
                model_version=version,
                scope=scope,
                phases=phases,
            )
        return Response(content, media_type=JSON)


ROUTES = [to_thread, thread_pool, dedicated_pool, batch]
