"""Timing one in-process call in the CPU state a server leaves it in.

A tight loop flatters native code: its instructions, constants and branch history stay in the CPU
from one call to the next. Between two requests a server runs its HTTP stack instead, which pushes
the model's code out of the caches and retrains the branch predictors on the interpreter. The three
conditions here are the ones ``make bench`` and ``measure.compile_options`` report:

- ``tight``: the same call again and again;
- ``cold_caches``: 16 MB of memory touched between calls (untimed);
- ``server_like``: cold caches plus a request body decoded and encoded 20 times between calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import msgspec
import numpy as np

from measure.clients import LatencySummary

CONDITIONS = ("tight", "cold_caches", "server_like")


class CpuState:
    """What runs between two timed calls: nothing, a cache flush, or a server's kind of work."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._scratch = np.zeros(4_000_000, dtype=np.float32)  # 16 MB: more than a core's L2 cache

    def between(self, condition: str) -> Callable[[], None] | None:
        """The untimed work for ``condition`` (one of :data:`CONDITIONS`)."""
        return {"tight": None, "cold_caches": self.evict_caches, "server_like": self.server_like}[condition]

    def evict_caches(self) -> None:
        """Touch more memory than the caches hold."""
        np.add(self._scratch, 1.0, out=self._scratch)

    def server_like(self) -> None:
        """Cold caches, and interpreter work like a server's between two requests."""
        self.evict_caches()
        for _ in range(20):
            msgspec.json.encode(msgspec.json.decode(self._body))

    def timed(self, call: Callable[[], object], condition: str, repeats: int = 3000) -> dict[str, Any]:
        """``call``'s latency summary under ``condition``, after 200 untimed warm-up calls."""
        between = self.between(condition)
        for _ in range(200):
            call()
        durations = []
        for _ in range(repeats):
            if between is not None:
                between()
            started = time.perf_counter()
            call()
            durations.append(time.perf_counter() - started)
        return asdict(LatencySummary.of(durations))
