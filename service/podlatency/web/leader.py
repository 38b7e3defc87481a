"""Trainer writes reach the leader: a standby forwards them to the address the leader announced.

The trainer Service selects every ready trainer. Samples (``/v1/samples``,
``/add_training_data_bulk``), ``/flush`` and ``/v1/retrain`` must reach the one that leads: a standby
sends them on to the leader the rollout ConfigMap names (:mod:`podlatency.cluster.configmap`) and
answers with the leader's answer. The Authorization header travels with the request, so the leader
checks the token. A request is forwarded at most once (a header marks it). With no leader known, or
the leader not answering, the standby answers 503 ``not_leader`` with Retry-After, as before.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from podlatency.errors import BodyTooLarge, NotLeader
from podlatency.learning.publishing import Publisher
from podlatency.web.body import read_body
from podlatency.web.errors import send_error, send_json

logger = logging.getLogger(__name__)

LEADER_PATHS = frozenset({"/v1/samples", "/add_training_data_bulk", "/flush", "/v1/retrain"})
FORWARDED_HEADER = "x-podlatency-forwarded-by"
PASSED_HEADERS = frozenset({b"content-type", b"authorization", b"traceparent", b"tracestate"})
FORWARD_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class LeaderAnswer:
    """What the leader answered."""

    status: int
    body: bytes
    headers: dict[str, str]


def post_to_leader(url: str, body: bytes, headers: dict[str, str]) -> LeaderAnswer:
    """POST ``body`` to ``url``; the answer, error statuses included. Raises OSError when unreachable."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310  (http only)
    try:
        with urllib.request.urlopen(request, timeout=FORWARD_TIMEOUT_S) as response:  # noqa: S310
            status, answer, received = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, answer, received = error.code, error.read(), error.headers
    kept = {name: received[name] for name in ("Content-Type", "Retry-After") if received.get(name)}
    return LeaderAnswer(status, answer, kept)


class ForwardToLeader(ASGIMiddleware):
    """On a standby trainer, sends the trainer write routes on to the leader."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, publisher: Publisher, identity: str, max_body_bytes: int) -> None:
        self._publisher = publisher
        self._identity = identity
        self._max_body_bytes = max_body_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Forward when this trainer does not lead and knows who does; else handle here."""
        leader = None
        if scope.get("method") == "POST" and scope["path"] in LEADER_PATHS:
            leader = self._publisher.leader_url()
        headers = dict(scope.get("headers", [])) if leader is not None else {}
        if leader is None or FORWARDED_HEADER.encode() in headers:
            await next_app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self._max_body_bytes)
        except BodyTooLarge as too_large:
            await send_error(send, too_large)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        url = leader + scope["path"] + (f"?{query}" if query else "")
        passed = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers.items()
            if name in PASSED_HEADERS
        }
        passed[FORWARDED_HEADER] = self._identity
        try:
            answer = await asyncio.get_running_loop().run_in_executor(None, post_to_leader, url, body, passed)
        except OSError as error:
            logger.warning("could not forward %s to the leader at %s: %s", scope["path"], leader, error)
            detail = f"this trainer is on standby and the leader at {leader} did not answer"
            await send_error(send, NotLeader(detail))
            return
        extra = {name: value for name, value in answer.headers.items() if name != "Content-Type"}
        await send_json(send, answer.status, answer.body, extra | {"X-Podlatency-Leader": leader})
