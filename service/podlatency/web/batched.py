"""How prediction routes answer: on a worker thread, or queued from the event loop when batching is on.

:func:`answer_here` is the plain way, for a handler on a worker thread: decode, predict (waiting
there for a shared batch when batching is on), encode. :func:`answer_from_batch` is the way of the
batching handlers.

The handler (``/v1/predict``, llm-d's ``/predict`` and ``/predict/bulk/strict``) is a sync handler
that runs on the event loop (``sync_to_thread=False``): it decodes the body, frames the rows and
queues them on the batcher, which takes microseconds for the few pods a router sends. It returns a
:class:`BatchedPrediction` at once. The batch runs on the batcher's own thread; when it is done the
result is handed to the event loop, where the answer is encoded (by the route's :class:`Codec`) and
sent.

Bodies over :data:`INLINE_BODY_BYTES` are decoded and framed on a worker thread instead, so a big
request does not hold up the event loop.

Why not a sync handler on a worker thread that blocks until its batch is done: that costs an executor
hop and a thread wake-up per request, and caps a batch at the number of handler threads
(docs/performance.md measures the difference).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from litestar import Response
from litestar.connection import Request
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from podlatency.batcher import BatchOutcome
from podlatency.dataplane import Predictions, PredictionService
from podlatency.predictor import LoadedModel
from podlatency.schema import PodMetrics
from podlatency.tracing import PhaseRecorder
from podlatency.web.errors import JSON, send_json
from podlatency.web.phases import HANDLER_DONE_KEY, arrival_ns, new_recorder, request_phases

INLINE_BODY_BYTES = 32 * 1024
"""Bodies up to this size (about 128 pods) are decoded and framed on the event loop."""


@dataclass(frozen=True, slots=True)
class Codec[RowT: PodMetrics]:
    """A route's body -> rows, and rows + predictions -> answer (it runs inside the ``encode`` phase)."""

    decode: Callable[[bytes], Sequence[RowT]]
    encode: Callable[[Sequence[RowT], Predictions, Scope, PhaseRecorder], bytes]


def answer_here[RowT: PodMetrics](
    service: PredictionService, codec: Codec[RowT], body: bytes, scope: Scope
) -> Response[bytes]:
    """Decode, predict and encode on this thread (a sync handler on a worker thread)."""
    with request_phases(scope, service) as phases:
        with phases.phase("decode"):
            rows = codec.decode(body)
        result = service.predict(rows, phases)
        with phases.phase("encode"):
            content = codec.encode(rows, result, scope, phases)
        return Response(content, media_type=JSON)


def answer_from_batch[RowT: PodMetrics](
    service: PredictionService, codec: Codec[RowT], body: bytes, scope: Scope
) -> BatchedPrediction[RowT]:
    """Queue the rows for a batch (a sync handler on the event loop); the answer goes out when it is done."""
    loop = asyncio.get_running_loop()  # the handler runs on it (sync_to_thread=False)
    return BatchedPrediction(service, codec, body, new_recorder(scope, service), arrival_ns(scope), loop)


class BatchedPrediction[RowT: PodMetrics](Response[bytes]):
    """Queues a request's rows on the batcher; its ASGI response waits for them on the event loop."""

    def __init__(  # noqa: PLR0917  (each is needed, and positional reads plainly here)
        self,
        service: PredictionService,
        codec: Codec[RowT],
        body: bytes,
        phases: PhaseRecorder,
        arrived_ns: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(b"")
        self._service = service
        self._codec = codec
        self._phases = phases
        self._arrived_ns = arrived_ns
        self._loop = loop
        self._result: asyncio.Future[BatchOutcome] = loop.create_future()
        self._rows: Sequence[RowT] = ()
        self._model: LoadedModel | None = None
        self._queueing: asyncio.Future[None] | None = None
        if len(body) <= INLINE_BODY_BYTES:
            self._queue(body, may_lead=False)  # on the event loop: the batch runs on the batcher's thread
        else:
            self._queueing = loop.run_in_executor(None, self._queue, body, True)

    def _queue(self, body: bytes, may_lead: bool) -> None:
        # ``dispatch``: from arrival until the rows are handled here (on the loop, or a worker thread).
        # ``decode`` starts where it ends: a pause in between (a garbage collection) still counts.
        dispatched_ns = time.time_ns()
        self._phases.record("dispatch", self._arrived_ns, dispatched_ns)
        with self._phases.phase("decode", started_ns=dispatched_ns):
            self._rows = self._codec.decode(body)
        self._model = self._service.predict_later(self._rows, self._phases, self._deliver, may_lead=may_lead)

    def _deliver(self, outcome: BatchOutcome | None, error: BaseException | None) -> None:
        """From the batch's thread: hand the outcome to the event loop."""
        self._loop.call_soon_threadsafe(_settle, self._result, outcome, error)

    def to_asgi_response(self, app: Any, request: Request[Any, Any, Any], **_: Any) -> ASGIResponse:
        """The ASGI callable that awaits the batch, then encodes and sends the answer."""
        return _AwaitedAnswer(self.answer)

    async def answer(self, scope: Scope, send: Send) -> None:
        """Wait for the batch, then encode and send; a failure raises (the error handlers answer)."""
        if self._queueing is not None:
            await self._queueing  # decoding errors (4xx) surface here
        by_target = self._service.record_batch(await self._result, self._phases)
        assert self._model is not None  # noqa: S101  (set when the rows were queued)
        with self._phases.phase("encode"):
            content = self._codec.encode(self._rows, Predictions(by_target, self._model), scope, self._phases)
        scope["state"][HANDLER_DONE_KEY] = time.time_ns()
        await send_json(send, 200, content)


def _settle(
    result: asyncio.Future[BatchOutcome], outcome: BatchOutcome | None, error: BaseException | None
) -> None:
    if result.done():
        return
    if error is not None:
        result.set_exception(error)
    elif outcome is not None:
        result.set_result(outcome)


class _AwaitedAnswer(ASGIResponse):
    """Litestar calls this with the request's ASGI channel once the handler has returned."""

    def __init__(self, answer: Callable[[Scope, Send], Awaitable[None]]) -> None:
        # Not ASGIResponse.__init__: headers and body are only known once the batch is done.
        self._answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._answer(scope, send)
