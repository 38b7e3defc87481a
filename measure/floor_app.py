"""The floor under any Litestar sync handler here: decode the body, answer a constant, nothing else.

``python -m measure.loadtest.server_choice`` serves it with the same uvicorn settings as ``podlatency serve``
(``uvicorn measure.floor_app:app``), to show how much of a prediction request's cost is the HTTP
stack itself: what batching cannot remove.
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, Response, get, post
from litestar.params import RawBody

ANSWER = b'{"predictions":[]}'


@post("/v1/predict", sync_to_thread=True, status_code=200)
def predict(body: RawBody) -> Response[bytes]:
    """Decode the JSON body (as ours does) and answer a constant."""
    msgspec.json.decode(body)
    return Response(ANSWER, media_type="application/json")


@get("/readyz", sync_to_thread=False)
def readyz() -> str:
    """Always ready."""
    return "ready"


app = Litestar([predict, readyz])
