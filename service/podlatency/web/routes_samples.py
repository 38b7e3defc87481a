"""Observed latencies from the router: ``/v1/samples`` and llm-d's ``/add_training_data_bulk``.

A request is validated whole before anything is kept: one bad row is a 422 naming it, and none of
the request's rows are stored. Accepted rows are on disk before the 202 is sent. An actual of 0 is
"not observed" for that target (:mod:`podlatency.learning.samples`); the answer says how many rows each target
kept.

Also llm-d's training-server routes for the samples: ``GET /data/status`` and ``POST /flush``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import RawBody

from podlatency import llmd_schema as llmd
from podlatency.errors import NotLeader
from podlatency.learning.live_accuracy import LiveAccuracy
from podlatency.learning.publishing import Publisher
from podlatency.learning.retraining import Retrainer
from podlatency.learning.samples import AddResult, SampleStore
from podlatency.metrics import service_metrics
from podlatency.prediction_service import PredictionService
from podlatency.schema import TARGETS, SamplesRequest, decode_json
from podlatency.web.guards import require_token, require_token_unless_router_samples
from podlatency.web.openapi import SAMPLE_ERRORS, error_responses, json_body_operation


def accepting(samples: SampleStore, publisher: Publisher) -> SampleStore:
    """The sample store, when this process is the trainer that takes samples now."""
    if not publisher.leads():
        raise NotLeader("this trainer is on standby and knows no leader yet; retry shortly")
    return samples


@post(
    "/v1/samples",
    sync_to_thread=True,
    status_code=202,
    guards=[require_token],
    operation_class=json_body_operation(
        SamplesRequest, "1-10,000 observed samples; any invalid row refuses all."
    ),
    responses=SAMPLE_ERRORS,
)
def add_samples(
    body: RawBody,
    samples: NamedDependency[SampleStore],
    publisher: NamedDependency[Publisher],
    live: NamedDependency[LiveAccuracy],
) -> dict[str, Any]:
    """Keep observed samples for retraining (each target the rows it was observed on), and score them."""
    request = decode_json(body, SamplesRequest)
    store = accepting(samples, publisher)
    result = store.add(request.samples)
    live.submit(request.samples)
    return _added(result) | {"held": store.counts()}


def _added(result: AddResult) -> dict[str, Any]:
    return {"accepted": result.accepted, "kept": result.kept, "unobserved": result.unobserved}


@post(
    "/add_training_data_bulk",
    sync_to_thread=True,
    status_code=202,
    guards=[require_token_unless_router_samples],
    operation_class=json_body_operation(llmd.TrainingDataBulkRequest, "llm-d's training entries."),
    responses=SAMPLE_ERRORS,
)
def add_training_data_bulk(
    body: RawBody,
    samples: NamedDependency[SampleStore],
    publisher: NamedDependency[Publisher],
    live: NamedDependency[LiveAccuracy],
) -> dict[str, object]:
    """llm-d ``/add_training_data_bulk``: the same, with llm-d's field name and answer."""
    request = decode_json(body, llmd.TrainingDataBulkRequest, lax=True)
    result = accepting(samples, publisher).add(request.entries)
    live.submit(request.entries)
    return {"message": f"Accepted {result.accepted} training samples."} | _added(result)


@get("/data/status", sync_to_thread=True)
def data_status(
    samples: NamedDependency[SampleStore], service: NamedDependency[PredictionService]
) -> dict[str, Any]:
    """llm-d ``/data/status``: rows kept per target, per regime, and held out."""
    store = samples
    counts = store.counts()
    training = {f"{target}_samples": counts[f"{target}_training"] for target in TARGETS}
    test = {f"{target}_samples": counts[f"{target}_holdout"] for target in TARGETS}
    return {
        "training_data": training | {"total_samples": sum(training.values())},
        "test_data": test | {"total_samples": sum(test.values())},
        "bucket_distribution": {
            target: {
                f"queue_{queue}_cache_{cache}_prefix_{prefix}": count
                for (queue, cache, prefix), count in sorted(regimes.items())
            }
            for target, regimes in store.bucket_counts().items()
        },
        "ensemble": {"ensemble_mode": False, "ensemble_active": False},
        "model_ready": service.holder.ready,
        "samples_seen": store.seen,
    }


@post(
    "/flush",
    sync_to_thread=True,
    status_code=200,
    guards=[require_token],
    operation_class=json_body_operation(
        llmd.FlushRequest, "What to forget; an empty body forgets everything."
    ),
    responses=SAMPLE_ERRORS,
)
def flush(
    body: RawBody, samples: NamedDependency[SampleStore], publisher: NamedDependency[Publisher]
) -> llmd.FlushResponse:
    """llm-d ``/flush``: forget kept training rows, held-out rows and training metrics (on disk too)."""
    request = decode_json(body, llmd.FlushRequest) if body.strip() else llmd.FlushRequest()
    flushed = accepting(samples, publisher).flush(
        training=request.flush_training_data, holdout=request.flush_test_data
    )
    if request.flush_metrics:
        service_metrics().holdout_error.clear()
    parts = [
        f"{flushed[kind]['ttft']} TTFT and {flushed[kind]['tpot']} TPOT {label} samples"
        for wanted, kind, label in (
            (request.flush_training_data, "training", "training"),
            (request.flush_test_data, "holdout", "test"),
        )
        if wanted
    ] + (["all metric scores"] if request.flush_metrics else [])
    return llmd.FlushResponse(
        success=True,
        flushed_at=datetime.now(UTC),
        reason=request.reason,
        ttft_training_samples_flushed=flushed["training"]["ttft"],
        tpot_training_samples_flushed=flushed["training"]["tpot"],
        ttft_test_samples_flushed=flushed["holdout"]["ttft"],
        tpot_test_samples_flushed=flushed["holdout"]["tpot"],
        metrics_cleared=request.flush_metrics,
        message=f"Successfully flushed: {', '.join(parts)}" if parts else "No data flushed",
    )


@post(
    "/v1/retrain",
    sync_to_thread=True,
    status_code=200,
    guards=[require_token],
    responses=error_responses(401, 503),
)
def retrain(retrainer: NamedDependency[Retrainer]) -> dict[str, object]:
    """Retrain from the observed samples now; the candidate is published only if it is not worse."""
    return msgspec.to_builtins(retrainer.run_once("request"))  # type: ignore[no-any-return]
