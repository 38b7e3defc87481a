"""Observed latencies from the router: ``/v1/samples`` and llm-d's ``/add_training_data_bulk``.

A request is validated whole before anything is kept: one bad row is a 422 naming it, and none of
the request's rows are stored. Accepted rows are on disk before the 202 is sent.
"""

from __future__ import annotations

import msgspec
from litestar import post
from litestar.datastructures import State
from litestar.params import RawBody

from podlatency.errors import NotLeader
from podlatency.retraining import Publisher, Retrainer
from podlatency.samples import SamplesRequest, SampleStore, TrainingDataBulkRequest
from podlatency.schema import decode_json
from podlatency.web.guards import require_token
from podlatency.web.openapi import json_body_operation


def samples_of(state: State) -> SampleStore:
    """The app's sample store, when this process is the trainer that takes samples now."""
    publisher: Publisher = state.publisher
    if not publisher.leads():
        raise NotLeader("this trainer is on standby; send samples to the leader (the trainer Service)")
    store: SampleStore = state.samples
    return store


@post(
    "/v1/samples",
    sync_to_thread=True,
    status_code=202,
    guards=[require_token],
    operation_class=json_body_operation(
        SamplesRequest, "1-10,000 observed samples; any invalid row refuses all."
    ),
)
def add_samples(body: RawBody, state: State) -> dict[str, int]:
    """Keep observed samples for retraining."""
    request = decode_json(body, SamplesRequest)
    store = samples_of(state)
    return {"accepted": store.add(request.samples)} | store.counts()


@post(
    "/add_training_data_bulk",
    sync_to_thread=True,
    status_code=202,
    guards=[require_token],
    operation_class=json_body_operation(TrainingDataBulkRequest, "llm-d's training entries."),
)
def add_training_data_bulk(body: RawBody, state: State) -> dict[str, object]:
    """llm-d ``/add_training_data_bulk``: the same, with llm-d's field name and answer."""
    request = decode_json(body, TrainingDataBulkRequest)
    accepted = samples_of(state).add(request.entries)
    return {"message": f"Accepted {accepted} training samples.", "accepted": accepted}


@post("/v1/retrain", sync_to_thread=True, status_code=200, guards=[require_token])
def retrain(state: State) -> dict[str, object]:
    """Retrain from the observed samples now; the candidate is published only if it is not worse."""
    retrainer: Retrainer = state.retrainer
    return msgspec.to_builtins(retrainer.run_once())  # type: ignore[no-any-return]
