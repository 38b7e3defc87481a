"""W3C trace context from the caller: ``traceparent``/``tracestate`` read straight from ASGI headers.

The edge (:mod:`podlatency.web.edge`) continues a caller's trace when its request carries them, and
pays nothing when it does not: the headers are scanned for the propagator's field names before
anything is extracted.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from opentelemetry import context, propagate
from opentelemetry.propagators.textmap import Getter, TextMapPropagator

ASGIHeaders = Iterable[tuple[bytes, bytes]]


class _HeaderGetter(Getter[ASGIHeaders]):
    """Reads trace-context headers from an ASGI header list (names arrive lower-cased)."""

    def get(self, carrier: ASGIHeaders, key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for name, value in carrier if name == wanted]
        return values or None

    def keys(self, carrier: ASGIHeaders) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


_HEADER_GETTER = _HeaderGetter()


@functools.cache
def _propagated_header_names(propagator: TextMapPropagator) -> frozenset[bytes]:
    # Composite propagators build their field set anew on every access.
    return frozenset(name.lower().encode("latin-1") for name in propagator.fields)


def caller_context(headers: ASGIHeaders) -> context.Context | None:
    """The caller's trace context from the request headers, or ``None`` when it sent none."""
    names = _propagated_header_names(propagate.get_global_textmap())
    if not any(name in names for name, _ in headers):
        return None
    return propagate.extract(headers, getter=_HEADER_GETTER)
