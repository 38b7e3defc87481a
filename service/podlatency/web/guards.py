"""Protection at the HTTP edge: the bearer token of the write routes, and load shedding.

Both run before a handler, so a refused request costs almost nothing.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from podlatency.errors import Overloaded, Unauthorized
from podlatency.metrics import service_metrics
from podlatency.settings import Settings
from podlatency.web.errors import send_error

PREDICTION_PATHS = ("/v1/predict", "/predict", "/variants/")


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


class InFlightLimit(ASGIMiddleware):
    """Answers prediction requests beyond ``limit`` in progress with 503 and ``Retry-After`` at once.

    A queue without bound only turns overload into latency for everyone; a router that gets a fast
    503 can fall back (to its default scoring) while accepted requests keep their latency. Counted
    on the event loop, so no lock is needed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Count the request in, or refuse it."""
        if (
            not self.limit
            or scope["type"] != ScopeType.HTTP
            or not scope["path"].startswith(PREDICTION_PATHS)
        ):
            await next_app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            service_metrics().requests_shed.inc()
            # Sent from here, past the exception machinery: shedding must cost far less than serving.
            detail = f"{self.in_flight} prediction requests in progress (PODLATENCY_MAX_IN_FLIGHT)"
            await send_error(send, Overloaded(detail))
            return
        self.in_flight += 1
        gauge = service_metrics().requests_in_flight
        gauge.inc()
        try:
            await next_app(scope, receive, send)
        finally:
            self.in_flight -= 1
            gauge.dec()
