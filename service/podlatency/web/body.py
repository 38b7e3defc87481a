"""A request's body read straight from ASGI, held to ``PODLATENCY_MAX_BODY_BYTES``.

For what reads its body past Litestar's request object: the batched prediction routes, and the
middleware that forwards a standby trainer's writes to its leader.
"""

from __future__ import annotations

from typing import cast

from litestar.types import HTTPRequestEvent, Receive, Scope

from podlatency.errors import BodyTooLarge


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; :class:`BodyTooLarge` past ``limit`` bytes (before reading, when declared)."""
    for header, value in scope.get("headers", ()):
        if header == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = cast("HTTPRequestEvent", await receive())
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"request body larger than {limit} bytes (PODLATENCY_MAX_BODY_BYTES)")
