"""How prediction routes answer: on a worker thread, or queued from the event loop when batching is on.

:func:`answer_here` is the plain way, for a handler on a worker thread: decode, predict (waiting
there for a shared batch when batching is on), encode. :func:`answer_from_batch` is the way of the
batching handlers.

The handler (``/v1/predict``, llm-d's ``/predict`` and ``/predict/bulk/strict``) is an async handler
on the event loop: it decodes the body, frames the rows and queues them on the batcher, which takes
microseconds for the few pods a router sends, then awaits their batch's future. The batch runs on the
batcher's own thread, which resolves the future with ``loop.call_soon_threadsafe``; the answer is then
encoded (by the route's :class:`Codec`) and returned like any other.

A request that is alone (no other prediction request in progress, after one turn of the loop) and
finds the batcher idle is predicted right there on the event loop: with nothing to batch with, a
hand-off to the batch thread and back would only add two thread wake-ups to its latency. Concurrent
requests are batched as above.

Bodies over :data:`INLINE_BODY_BYTES` are decoded and framed on a worker thread instead, so a big
request does not hold up the event loop.

Why not a sync handler on a worker thread that blocks until its batch is done: that costs an executor
hop and a thread wake-up per request, and caps a batch at the number of handler threads
(docs/performance.md measures the difference).

The batching handlers are plain ASGI handlers (:func:`batched_route`): Litestar routes to them, and its
middleware and error handlers apply as to any route, but they read the body and send the answer
themselves. Litestar's HTTP handler machinery (a request object, the signature model, dependency
resolution, a response object and its conversion) costs about as much CPU per request as the HTTP
floor's own work (docs/performance.md, "Against the floor"). Litestar documents
only HTTP handlers, so the OpenAPI document describes these routes with their batching-off handlers,
which take the same bodies and give the same answers (:func:`podlatency.web.openapi.document_with`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from litestar import Response, asgi
from litestar.exceptions import MethodNotAllowedException
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from podlatency.engines.batching import BatchOutcome
from podlatency.engines.predictor import LoadedModel
from podlatency.prediction_service import Predictions, PredictionService
from podlatency.schema import PodMetrics
from podlatency.tracing.phase_spans import PhaseRecorder
from podlatency.web.body import read_body
from podlatency.web.errors import JSON, send_json
from podlatency.web.phases import HANDLER_DONE_KEY, alone, arrival_ns, new_recorder, request_phases

INLINE_BODY_BYTES = 32 * 1024
"""Bodies up to this size (about 128 pods) are decoded and framed on the event loop."""


@dataclass(frozen=True, slots=True)
class Codec[RequestT]:
    """A route's body -> request, its rows, and request + predictions -> answer (in the ``encode`` phase)."""

    decode: Callable[[bytes], RequestT]
    rows: Callable[[RequestT], Sequence[PodMetrics]]
    encode: Callable[[RequestT, Predictions, Scope, PhaseRecorder], bytes]


def answer_here[RequestT](
    service: PredictionService, codec: Codec[RequestT], body: bytes, scope: Scope
) -> Response[bytes]:
    """Decode, predict and encode on this thread (a sync handler on a worker thread)."""
    with request_phases(scope, service) as phases:
        with phases.phase("decode"):
            request = codec.decode(body)
        result = service.predict(codec.rows(request), phases)
        with phases.phase("encode"):
            content = codec.encode(request, result, scope, phases)
        return Response(content, media_type=JSON)


def batched_route[RequestT](
    path: str, service: PredictionService, codec: Codec[RequestT], *, name: str
) -> ASGIRouteHandler:
    """``POST path`` answered by :func:`answer_from_batch`, as a plain ASGI handler (see the module)."""
    max_body_bytes = service.settings.max_body_bytes

    @asgi(path, is_mount=False, copy_scope=False, name=name)  # the edge reads what the handler notes in it
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            raise MethodNotAllowedException(headers={"Allow": "POST"})
        body = await read_body(scope, receive, max_body_bytes)
        await send_json(send, 200, await answer_from_batch(service, codec, body, scope))

    return handler


async def answer_from_batch[RequestT](
    service: PredictionService, codec: Codec[RequestT], body: bytes, scope: Scope
) -> bytes:
    """Queue the rows for a batch, await it on the event loop, then encode the answer's body."""
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    phases = new_recorder(scope, service)
    arrived_ns = arrival_ns(scope)
    result: asyncio.Future[BatchOutcome] = loop.create_future()

    def deliver(outcome: BatchOutcome | None, error: BaseException | None) -> None:
        """From the thread that ran the batch: hand the outcome to the event loop."""
        if threading.get_ident() == loop_thread:  # predicted right here on the loop
            _settle(result, outcome, error)
        else:
            loop.call_soon_threadsafe(_settle, result, outcome, error)

    def queue(may_lead: bool) -> tuple[RequestT, LoadedModel]:
        # ``dispatch``: from arrival until the rows are handled here (on the loop, or a worker thread).
        # ``decode`` starts where it ends: a pause in between (a garbage collection) still counts.
        dispatched_ns = time.time_ns()
        phases.record("dispatch", arrived_ns, dispatched_ns)
        with phases.phase("decode", started_ns=dispatched_ns):
            request = codec.decode(body)
        return request, service.predict_later(codec.rows(request), phases, deliver, may_lead=may_lead)

    if len(body) <= INLINE_BODY_BYTES:
        # On the event loop: alone, it predicts here when the batcher is idle; else on the batch thread.
        lead_here = alone(scope)
        if lead_here:
            # Requests that arrived with this one have tasks that have not run yet: one turn of the
            # loop lets them count themselves in, so under load nothing is predicted on the loop.
            await asyncio.sleep(0)
            lead_here = alone(scope)
        request, model = queue(lead_here)
    else:
        request, model = await loop.run_in_executor(None, queue, True)
    by_target = service.record_batch(await result, phases)
    with phases.phase("encode"):
        content = codec.encode(request, Predictions(by_target, model), scope, phases)
    scope["state"][HANDLER_DONE_KEY] = time.time_ns()
    return content


def _settle(
    result: asyncio.Future[BatchOutcome], outcome: BatchOutcome | None, error: BaseException | None
) -> None:
    if result.done():
        return
    if error is not None:
        result.set_exception(error)
    elif outcome is not None:
        result.set_result(outcome)
