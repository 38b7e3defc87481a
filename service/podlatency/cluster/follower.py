"""Following a declared model version: download it, verify it, hot-swap it in.

A *rollout record* declares which version every replica should serve: the version, the SHA-256 of
its bundle archive (see :mod:`podlatency.registry`) and the URL to fetch the archive from. In a
cluster the record lives in a ConfigMap (:mod:`podlatency.cluster.configmap`); the follower here does not care
where it came from.

:class:`ModelFollower` applies records: a version already stored is verified against the record's
SHA-256 and activated; any other is downloaded, verified and stored first. The swap replaces one
reference, so requests in flight finish on the model they started with. Whatever fails — an
unreachable URL, a wrong checksum, a corrupt bundle — the model in service keeps serving, and the
failure is counted and reported as a Warning event.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from podlatency.dataplane import PredictionService
from podlatency.errors import ModelLoadError, PodlatencyError
from podlatency.metrics import service_metrics
from podlatency.registry import MAX_ARCHIVE_BYTES

logger = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
EventSink = Callable[[EventType, str, str], None]
"""Reports what happened: event type, a CamelCase reason and a one-line message."""

FETCH_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """The model version every replica should serve, and how to get it."""

    version: str
    sha256: str
    url: str
    pinned: bool = False


def log_event(event_type: EventType, reason: str, message: str) -> None:
    """The event sink outside Kubernetes: the log."""
    level = logging.INFO if event_type == "Normal" else logging.WARNING
    logger.log(level, "%s: %s", reason, message)


def fetch_archive(url: str, timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """Download a bundle archive; any failure is a :class:`ModelLoadError` naming the URL."""
    if not url.startswith(("http://", "https://")):
        raise ModelLoadError(f"cannot fetch a model from {url!r}: only http and https URLs are supported")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (scheme checked above)
            archive: bytes = response.read(MAX_ARCHIVE_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise ModelLoadError(f"fetching {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ModelLoadError(f"fetching {url} failed: {reason}") from None
    if len(archive) > MAX_ARCHIVE_BYTES:
        raise ModelLoadError(f"{url} is larger than {MAX_ARCHIVE_BYTES} bytes; not a model bundle")
    return archive


class ModelFollower:
    """Makes a service serve whatever version the latest rollout record declares."""

    def __init__(
        self,
        service: PredictionService,
        events: EventSink = log_event,
        fetch: Callable[[str], bytes] = fetch_archive,
    ) -> None:
        self.service = service
        self.events = events
        self.fetch = fetch
        self._lock = threading.Lock()
        self.last_record: RolloutRecord | None = None

    def apply(self, record: RolloutRecord) -> bool:
        """Serve ``record``'s version; True when it is now in service (swapped or already there)."""
        with self._lock:
            self.last_record = record
            current = self.service.holder.current_or_none()
            if current is not None and current.version == record.version:
                return True
            registry = self.service.registry
            try:
                if record.version in registry.versions():
                    stored_sha256 = registry.archive_sha256(record.version)
                    if stored_sha256 != record.sha256.lower():
                        raise ModelLoadError(
                            f"stored model {record.version} has archive sha256 {stored_sha256}, "
                            f"the rollout declares {record.sha256}"
                        )
                else:
                    registry.install_archive(record.version, self.fetch(record.url), record.sha256)
                self.service.serve_bundle(registry.load(record.version))
                registry.activate(record.version)
            except PodlatencyError as error:
                service_metrics().model_rollouts.labels(outcome="failed").inc()
                serving = current.version if current is not None else "no model"
                self.events(
                    "Warning",
                    "ModelRolloutFailed",
                    f"cannot serve model {record.version} ({error.detail}); still serving {serving}",
                )
                return False
            service_metrics().model_rollouts.labels(outcome="succeeded").inc()
            previous = current.version if current is not None else "no model"
            self.events("Normal", "ModelRolledOut", f"now serving model {record.version} (was {previous})")
            return True

    def retry(self) -> bool:
        """Apply the last record again (after a failure); True when its version is in service."""
        record = self.last_record
        return record is not None and self.apply(record)
