"""Which requests' traces are kept: head-sampled ones, slow ones and failed ones.

The head sampler decides when a request arrives (:mod:`podlatency.tracing.otel`). Every request's phases
are timed anyway, so a request the sampler passed over can still be kept once it is answered:

- **slow**: its server time exceeded the route's slow threshold (``PODLATENCY_TRACE_SLOW_MS``): the
  route's rolling p99 over about the last minute (``auto``), a fixed number of milliseconds, or never
  (``off``);
- **error**: it answered 5xx, or was shed with 503.

The reason is the root span's ``podlatency.trace.kept`` attribute: ``error`` before ``slow`` before
``sampled``, so searching Jaeger for ``podlatency.trace.kept=error`` finds every failed request kept.

Thresholds are kept per process and only touched from the event loop, so they need no lock.
"""

from __future__ import annotations

import math
from typing import Protocol

KEPT_ATTRIBUTE = "podlatency.trace.kept"
SAMPLED, SLOW, ERROR = "sampled", "slow", "error"


class SlowThresholds(Protocol):
    """Per route, the server time above which a request's trace is kept as slow."""

    def seconds(self, route: str) -> float | None:
        """The route's threshold now (``None``: no request counts as slow)."""
        ...

    def observe(self, route: str, seconds: float, now_s: float) -> None:
        """Count an answered request's server time (at monotonic time ``now_s``)."""
        ...


class NeverSlow:
    """``PODLATENCY_TRACE_SLOW_MS=off``: only head-sampled and failed requests are kept."""

    def seconds(self, route: str) -> float | None:
        return None

    def observe(self, route: str, seconds: float, now_s: float) -> None:
        return None


class FixedThreshold:
    """``PODLATENCY_TRACE_SLOW_MS=<milliseconds>``: one threshold for every route."""

    def __init__(self, milliseconds: float) -> None:
        self._seconds = milliseconds / 1000.0

    def seconds(self, route: str) -> float | None:
        return self._seconds

    def observe(self, route: str, seconds: float, now_s: float) -> None:
        return None


# Log-spaced buckets, each 10% wider than the one before, from 10 microseconds to about 30 minutes:
# the p99 is read as the upper edge of its bucket, so at most about 1% of requests exceed it.
SMALLEST_S = 1e-5
GROWTH = 1.1
BUCKETS = 200
_LOG_GROWTH = math.log(GROWTH)


def bucket_of(seconds: float) -> int:
    """The bucket whose upper edge is the smallest at or above ``seconds``."""
    if seconds <= SMALLEST_S:
        return 0
    return min(BUCKETS - 1, math.ceil(math.log(seconds / SMALLEST_S) / _LOG_GROWTH - 1e-9))


def upper_edge(bucket: int) -> float:
    """The largest server time a bucket holds, in seconds."""
    return float(SMALLEST_S * GROWTH**bucket)


class _RouteWindow:
    """One route's server times over the last ``slices`` x ``slice_s`` seconds, as bucket counts."""

    def __init__(self, slices: int, slice_s: float, min_requests: int, quantile: float, now_s: float) -> None:
        self._slice_s = slice_s
        self._min_requests = min_requests
        self._quantile = quantile
        self._slices = [[0] * BUCKETS for _ in range(slices)]
        self._totals = [0] * BUCKETS
        self._count = 0
        self._current = 0
        self._slice_started_s = now_s
        self._since_update = 0
        self.threshold_s: float | None = None

    def observe(self, seconds: float, now_s: float) -> None:
        if now_s - self._slice_started_s >= self._slice_s:
            self._rotate(now_s)
        bucket = bucket_of(seconds)
        self._slices[self._current][bucket] += 1
        self._totals[bucket] += 1
        self._count += 1
        self._since_update += 1
        if self._since_update >= RollingP99.UPDATE_EVERY:
            self.update()

    def _rotate(self, now_s: float) -> None:
        """Start a new slice, forgetting the slices that are now older than the window."""
        elapsed = min(len(self._slices), int((now_s - self._slice_started_s) // self._slice_s))
        for _ in range(elapsed):
            self._current = (self._current + 1) % len(self._slices)
            expired = self._slices[self._current]
            for bucket, count in enumerate(expired):
                if count:
                    self._totals[bucket] -= count
                    self._count -= count
                    expired[bucket] = 0
        self._slice_started_s = now_s
        self.update()

    def update(self) -> None:
        """Read the quantile off the window (none while it holds fewer than ``min_requests``)."""
        self._since_update = 0
        if self._count < self._min_requests:
            self.threshold_s = None
            return
        wanted = self._quantile * self._count
        seen = 0
        for bucket, count in enumerate(self._totals):
            seen += count
            if seen >= wanted:
                self.threshold_s = upper_edge(bucket)
                return


class RollingP99:
    """``PODLATENCY_TRACE_SLOW_MS=auto``: each route's p99 server time over about the last minute.

    A request slower than its route's p99 is kept. Until a route has seen ``min_requests`` requests in
    the window, none of its requests counts as slow (a p99 of a handful of requests says nothing).
    The p99 is re-read every :attr:`UPDATE_EVERY` requests and when the window moves on.
    """

    UPDATE_EVERY = 64

    def __init__(
        self,
        window_s: float = 60.0,
        slices: int = 6,
        min_requests: int = 100,
        quantile: float = 0.99,
    ) -> None:
        self._slices = slices
        self._slice_s = window_s / slices
        self._min_requests = min_requests
        self._quantile = quantile
        self._routes: dict[str, _RouteWindow] = {}

    def seconds(self, route: str) -> float | None:
        window = self._routes.get(route)
        return None if window is None else window.threshold_s

    def observe(self, route: str, seconds: float, now_s: float) -> None:
        window = self._routes.get(route)
        if window is None:
            window = _RouteWindow(self._slices, self._slice_s, self._min_requests, self._quantile, now_s)
            self._routes[route] = window
        window.observe(seconds, now_s)


def slow_thresholds(setting: str) -> SlowThresholds:
    """The rule ``PODLATENCY_TRACE_SLOW_MS`` names (already validated by the settings)."""
    word = setting.strip().lower()
    if word == "auto":
        return RollingP99()
    if word == "off":
        return NeverSlow()
    return FixedThreshold(float(word))


def kept_reason(head_sampled: bool, status: int, seconds: float, threshold_s: float | None) -> str | None:
    """Why a request's trace is kept (``None``: it is not)."""
    if status >= 500:
        return ERROR
    if threshold_s is not None and seconds > threshold_s:
        return SLOW
    return SAMPLED if head_sampled else None
