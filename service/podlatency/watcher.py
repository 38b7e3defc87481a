"""Follows the model folder's ``ACTIVE`` pointer and hot-swaps in the version it names.

Another process activates versions: a trainer, ``podlatency train --out``, an operator.

In-flight requests finish on the model they started with (the swap replaces a reference). A version
that fails to load is logged, counted, and not retried until ``ACTIVE`` names another one; the
current model keeps serving.
"""

from __future__ import annotations

import logging

from podlatency.errors import PodlatencyError
from podlatency.metrics import service_metrics
from podlatency.periodic import PeriodicTask
from podlatency.prediction_service import PredictionService

logger = logging.getLogger(__name__)


class ActiveVersionWatcher:
    """Polls ``ACTIVE`` every ``interval_s`` on a daemon thread."""

    def __init__(self, service: PredictionService, interval_s: float) -> None:
        self.service = service
        self.interval_s = interval_s
        self._failed_version: str | None = None
        self._task = PeriodicTask("model-watcher", interval_s, self.check_once)

    def check_once(self) -> bool:
        """Swap in the active version if it is new; True when a swap happened."""
        version = self.service.registry.active_version()
        current = self.service.holder.current_or_none()
        serving = current.version if current is not None else None
        if version is None or version in (serving, self._failed_version):
            return False
        try:
            self.service.reload()
        except PodlatencyError as error:
            self._failed_version = version
            service_metrics().model_load_failures.inc()
            logger.error("cannot switch to model %s, keeping %s: %s", version, serving, error.detail)
            return False
        self._failed_version = None
        logger.info("switched from model %s to %s", serving, version)
        return True

    def start(self) -> None:
        """Run on a daemon thread every interval until :meth:`stop`."""
        self._task.start()

    def stop(self) -> None:
        """Stop the background thread."""
        self._task.stop()
