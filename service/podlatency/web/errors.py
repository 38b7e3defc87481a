"""The one place errors become HTTP responses: a JSON body ``{"error", "detail", "field"}``.

``detail`` is also what FastAPI-based clients (the llm-d router among them) read.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap, Send

from podlatency.errors import ClientError, PodlatencyError, Unauthorized

logger = logging.getLogger(__name__)

JSON = "application/json"


class ErrorBody(msgspec.Struct, frozen=True):
    """What every error response carries."""

    error: str
    detail: str
    field: str | None = None


def _respond(status_code: int, body: ErrorBody, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(msgspec.json.encode(body), status_code=status_code, media_type=JSON, headers=headers)


def _error_headers(error: PodlatencyError) -> dict[str, str] | None:
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="podlatency"'}
    return None if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}


def podlatency_error(_: Request[Any, Any, Any], error: PodlatencyError) -> Response[bytes]:
    """Our own errors carry their status code."""
    if error.status_code >= 500 and error.retry_after_s is None and not isinstance(error, ClientError):
        logger.error("%s: %s", error.code, error.detail)
    return _respond(
        error.status_code, ErrorBody(error.code, error.detail, error.field), _error_headers(error)
    )


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """A JSON answer sent straight to the ASGI server, past Litestar's response machinery."""
    raw_headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
    raw_headers += [(key.lower().encode(), value.encode()) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, error: PodlatencyError) -> None:
    """The same response, sent straight to the ASGI server (for middleware that refuses before routing)."""
    body = msgspec.json.encode(ErrorBody(error.code, error.detail, error.field))
    await send_json(send, error.status_code, body, _error_headers(error))


def litestar_http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[bytes]:
    """Litestar's own refusals (unknown route, wrong method, body too large) in the same shape."""
    code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
        error.status_code, "http_error"
    )
    detail = str(error.detail)
    if error.status_code == 413:
        limit = getattr(request.app.state, "settings", None)
        if limit is not None:
            detail = f"request body larger than {limit.max_body_bytes} bytes (PODLATENCY_MAX_BODY_BYTES)"
    return _respond(error.status_code, ErrorBody(code, detail), dict(error.headers or {}))


def unexpected_error(_: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    """A bug: logged with its traceback, answered without internals."""
    logger.error("unhandled error", exc_info=error)
    return _respond(500, ErrorBody("internal_error", "internal server error; see the server log"))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    PodlatencyError: podlatency_error,
    HTTPException: litestar_http_error,
    Exception: unexpected_error,
}
