"""A step run every few seconds on a daemon thread, for the background loops (retraining, model watch)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class PeriodicTask:
    """Runs ``step`` every ``interval_s`` until :meth:`stop`; a failing step is logged, not fatal."""

    def __init__(self, name: str, interval_s: float, step: Callable[[], object]) -> None:
        self.name = name
        self.interval_s = interval_s
        self._step = step
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._loop, name=f"podlatency-{self.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._step()
            except Exception:  # one failed step must not end the loop for good
                logger.exception("%s failed; will try again in %g s", self.name, self.interval_s)

    def stop(self) -> None:
        """Stop the thread and wait for the step in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
