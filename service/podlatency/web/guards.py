"""The bearer token of the write routes (load shedding is in :class:`podlatency.web.phases.EdgeMiddleware`).

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
    if not settings.api_token:
        return
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), settings.api_token.encode()
    ):
        raise Unauthorized("this route needs the header 'Authorization: Bearer <PODLATENCY_API_TOKEN>'")
