"""Following a trainer over HTTP: its active version, downloaded, verified against its SHA-256, swapped in.

The third way a predictor learns which model to serve, beside the model folder's ``ACTIVE`` pointer
(:mod:`podlatency.watcher`) and the Kubernetes rollout ConfigMap (:mod:`podlatency.cluster`): with
``PODLATENCY_FOLLOW_URL`` set to a trainer's base URL, every ``PODLATENCY_WATCH_INTERVAL_S`` it reads
``GET /v1/models`` (the active version and each stored version's archive SHA-256) and, when the
active version is not the one in service, applies it as a rollout record
(:class:`podlatency.follower.ModelFollower`): the archive from ``GET /v1/models/{version}/bundle``,
checked against the SHA-256 the trainer listed, stored in this predictor's own model folder, loaded
(its content hash checked again) and swapped in whole. It is how the llm-d router's chart runs its
prediction sidecars: each with its own volume, following the training sidecar at
``TRAINING_SERVER_URL``.

Whatever fails (the trainer unreachable or answering nonsense, a download, a checksum, a corrupt
bundle), the model in service keeps serving and the failure is logged once; a version that failed is
not downloaded again until the trainer's active version or its SHA-256 changes, or
:data:`RETRY_FAILED_S` have passed (a fault on the way heals).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from podlatency.errors import ModelLoadError
from podlatency.follower import ModelFollower, RolloutRecord, fetch_archive, http_get
from podlatency.periodic import PeriodicTask
from podlatency.prediction_service import PredictionService

logger = logging.getLogger(__name__)

RETRY_FAILED_S = 60.0
"""Seconds before a version that failed to download or load is tried again."""

MAX_LISTING_BYTES = 4 * 1024 * 1024
"""A trainer's ``/v1/models`` lists a few versions' metadata: far below this."""


def fetch_listing(url: str) -> dict[str, Any]:
    """``GET url`` as a JSON object; any failure is a :class:`ModelLoadError` naming the URL."""
    body = http_get(url, MAX_LISTING_BYTES, "a trainer's list of models")
    try:
        listing = json.loads(body)
    except ValueError:
        raise ModelLoadError(f"{url} did not answer JSON") from None
    if not isinstance(listing, dict):
        raise ModelLoadError(f"{url} did not answer a JSON object")
    return listing


def active_record(listing: dict[str, Any], base_url: str) -> RolloutRecord | None:
    """The trainer's active version as a rollout record (``None`` while it has none)."""
    active = listing.get("active")
    if active is None:
        return None
    versions = listing.get("versions")
    entries = [entry for entry in versions if isinstance(entry, dict)] if isinstance(versions, list) else []
    sha256 = next((entry.get("archive_sha256") for entry in entries if entry.get("version") == active), None)
    if not isinstance(active, str) or not isinstance(sha256, str):
        raise ModelLoadError(
            f"{base_url}/v1/models names active version {active!r} without its archive SHA-256"
        )
    return RolloutRecord(version=active, sha256=sha256, url=f"{base_url}/v1/models/{active}/bundle")


class HttpFollower:
    """Polls a trainer every ``interval_s`` on a daemon thread and serves its active version."""

    def __init__(
        self,
        service: PredictionService,
        base_url: str,
        interval_s: float,
        *,
        read: Callable[[str], dict[str, Any]] = fetch_listing,
        fetch: Callable[[str], bytes] = fetch_archive,
        retry_failed_s: float = RETRY_FAILED_S,
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.read = read
        self.follower = ModelFollower(service, fetch=fetch)
        self.retry_failed_s = retry_failed_s
        self._failed: RolloutRecord | None = None
        self._failed_at = 0.0
        self._unreachable = False
        self._task = PeriodicTask("model-follower", interval_s, self.check_once)

    def check_once(self) -> bool:
        """Serve the trainer's active version; True when it is in service now (swapped or already)."""
        try:
            record = active_record(self.read(f"{self.base_url}/v1/models"), self.base_url)
        except ModelLoadError as error:
            if not self._unreachable:  # once per outage, not every interval
                logger.warning("cannot follow the trainer, keeping the model in service: %s", error.detail)
            self._unreachable = True
            return False
        if self._unreachable:
            logger.info("the trainer at %s answers again", self.base_url)
            self._unreachable = False
        if record is None:
            return False
        if record == self._failed and time.monotonic() - self._failed_at < self.retry_failed_s:
            return False
        self.follower.declare(record)
        if self.follower.apply(record):
            self._failed = None
            return True
        self._failed, self._failed_at = record, time.monotonic()
        return False

    def start(self) -> None:
        """Run on a daemon thread every interval until :meth:`stop`."""
        self._task.start()

    def stop(self) -> None:
        """Stop the background thread."""
        self._task.stop()
