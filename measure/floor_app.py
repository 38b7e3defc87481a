"""The floor under any Litestar service here: an async handler that decodes the body and answers a constant.

``make bench`` (:mod:`measure.versus_floor`) serves it with the same uvicorn settings as ``podlatency
serve`` (one process, uvloop, httptools: ``uvicorn measure.floor_app:app``) and sets podlatency's
prediction routes against it: what a request costs here before anything is predicted, timed, counted
or traced, which nothing podlatency does can remove. ``plain_asgi_app`` is the same as a plain ASGI
handler in Litestar, as podlatency's batched routes are.
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, Response, asgi, get, post
from litestar.params import RawBody
from litestar.types import Receive, Scope, Send

from podlatency.web.body import read_body
from podlatency.web.errors import send_json

ANSWER = b'{"predictions":[]}'


@post(["/v1/predict", "/predict/bulk/strict"], status_code=200)
async def predict(body: RawBody) -> Response[bytes]:
    """Decode the JSON body (as ours does) and answer a constant."""
    msgspec.json.decode(body)
    return Response(ANSWER, media_type="application/json")


@asgi("/v1/predict", is_mount=False, copy_scope=False)
async def predict_plain(scope: Scope, receive: Receive, send: Send) -> None:
    """The same as a plain ASGI handler, as podlatency serves its batched prediction routes."""
    msgspec.json.decode(await read_body(scope, receive, 1 << 20))
    await send_json(send, 200, ANSWER)


@get("/readyz", sync_to_thread=False)
def readyz() -> str:
    """Always ready."""
    return "ready"


app = Litestar([predict, readyz])
plain_asgi_app = Litestar([predict_plain, readyz])
"""Without Litestar's HTTP handler machinery (:mod:`measure.request_cost` sets the two apart)."""
