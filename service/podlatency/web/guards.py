"""The bearer token of the write routes (load shedding is in :class:`podlatency.web.edge.EdgeMiddleware`).

It runs before a handler, so a refused request costs almost nothing.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from podlatency.errors import Unauthorized
from podlatency.settings import Settings


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Refuse a write route without ``Authorization: Bearer <PODLATENCY_API_TOKEN>`` (when one is set)."""
    settings: Settings = connection.app.state.settings
    if not settings.api_token or _bears(connection, settings.api_token):
        return
    raise Unauthorized("this route needs the header 'Authorization: Bearer <PODLATENCY_API_TOKEN>'")


def require_token_unless_router_samples(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    """The token guard of llm-d's sample route, which the llm-d router calls without a token."""
    settings: Settings = connection.app.state.settings
    if (
        not settings.api_token
        or settings.router_samples_without_token
        or _bears(connection, settings.api_token)
    ):
        return
    raise Unauthorized(
        "this route needs the header 'Authorization: Bearer <PODLATENCY_API_TOKEN>'; the llm-d router "
        "sends none: set PODLATENCY_ROUTER_SAMPLES_WITHOUT_TOKEN=true (chart: auth.routerSamplesWithoutToken)"
    )


def _bears(connection: ASGIConnection[Any, Any, Any, Any], token: str) -> bool:
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
