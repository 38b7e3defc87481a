"""The one place errors become HTTP responses: a JSON body ``{"error", "detail", "field"}``.

``detail`` is also what FastAPI-based clients (the llm-d router among them) read.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from podlatency.errors import PodlatencyError

logger = logging.getLogger(__name__)

JSON = "application/json"


class ErrorBody(msgspec.Struct, frozen=True):
    """What every error response carries."""

    error: str
    detail: str
    field: str | None = None


def _respond(status_code: int, body: ErrorBody, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(msgspec.json.encode(body), status_code=status_code, media_type=JSON, headers=headers)


def podlatency_error(_: Request[Any, Any, Any], error: PodlatencyError) -> Response[bytes]:
    """Our own errors carry their status code."""
    headers = None if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
    if error.status_code >= 500 and error.retry_after_s is None:
        logger.error("%s: %s", error.code, error.detail)
    return _respond(error.status_code, ErrorBody(error.code, error.detail, error.field), headers)


def litestar_http_error(_: Request[Any, Any, Any], error: HTTPException) -> Response[bytes]:
    """Litestar's own refusals (unknown route, wrong method, body too large) in the same shape."""
    code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
        error.status_code, "http_error"
    )
    return _respond(error.status_code, ErrorBody(code, str(error.detail)), dict(error.headers or {}))


def unexpected_error(_: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    """A bug: logged with its traceback, answered without internals."""
    logger.error("unhandled error", exc_info=error)
    return _respond(500, ErrorBody("internal_error", "internal server error; see the server log"))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    PodlatencyError: podlatency_error,
    HTTPException: litestar_http_error,
    Exception: unexpected_error,
}
