"""Following a declared model version: download it, verify it, hot-swap it in.

A *rollout record* declares which version every replica should serve: the version, the SHA-256 of
its bundle archive (see :mod:`podlatency.registry`) and the URL to fetch the archive from. In a
cluster the record lives in a ConfigMap (:mod:`podlatency.cluster.configmap`); a predictor following a
trainer over HTTP reads it from the trainer (:mod:`podlatency.http_follow`). The follower here does not
care where it came from.

:class:`ModelFollower` applies records: a version already stored is served from here; any other is
downloaded, checked against the record's SHA-256 and stored first. It also tracks whether the model
in service is the declared one, and since when it has not been. The swap replaces one reference, so
requests in flight finish on the model they started with. Whatever fails — an unreachable URL, a
wrong checksum, a corrupt bundle — the model in service keeps serving, and the failure is counted
and reported as a Warning event.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from podlatency.errors import ModelLoadError, PodlatencyError
from podlatency.metrics import service_metrics
from podlatency.prediction_service import PredictionService
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
    return http_get(url, MAX_ARCHIVE_BYTES, "a model bundle", timeout_s)


def http_get(url: str, max_bytes: int, what: str, timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """``GET url``'s body, at most ``max_bytes`` of ``what``; any failure is a :class:`ModelLoadError`."""
    if not url.startswith(("http://", "https://")):
        raise ModelLoadError(f"cannot fetch {what} from {url!r}: only http and https URLs are supported")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (scheme checked above)
            body: bytes = response.read(max_bytes + 1)
    except urllib.error.HTTPError as error:
        raise ModelLoadError(f"fetching {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ModelLoadError(f"fetching {url} failed: {reason}") from None
    if len(body) > max_bytes:
        raise ModelLoadError(f"{url} is larger than {max_bytes} bytes; not {what}")
    return body


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
        self.declared: RolloutRecord | None = None
        """What is declared now (:meth:`declare`; a failed one is retried between watches); ``None``
        when nothing is, or the ConfigMap is gone."""
        self.mismatch_since: float | None = None
        """Since when (Unix seconds) the model in service has not been the declared one."""

    def apply(self, record: RolloutRecord) -> bool:
        """Serve ``record``'s version; True when it is now in service (swapped or already there).

        A version already stored is served from here. Its archive may differ from the declared one
        in metadata alone (when it was trained, say): the version is a hash of everything that
        decides predictions, checked on every load, so it predicts the same. Only a download is
        checked against the declared SHA-256.
        """
        with self._lock:
            current = self.service.holder.current_or_none()
            if current is not None and current.version == record.version:
                return True
            registry = self.service.registry
            try:
                if record.version not in registry.versions():
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
            finally:
                self.check_drift()
            service_metrics().model_rollouts.labels(outcome="succeeded").inc()
            previous = current.version if current is not None else "no model"
            self.events("Normal", "ModelRolledOut", f"now serving model {record.version} (was {previous})")
            return True

    def declare(self, record: RolloutRecord | None) -> None:
        """Note what is declared now (``None``: nothing, or no ConfigMap), before applying it."""
        self.declared = record
        self.check_drift()

    def check_drift(self) -> bool:
        """Whether the model in service is the declared one (or nothing is declared); updates the gauges."""
        current = self.service.holder.current_or_none()
        declared = self.declared
        matches = declared is None or (current is not None and current.version == declared.version)
        if matches:
            self.mismatch_since = None
        elif self.mismatch_since is None:
            self.mismatch_since = time.time()
        metrics = service_metrics()
        metrics.model_matches_declared.set(1 if matches else 0)
        metrics.declared_mismatch_since.set(self.mismatch_since or 0)
        return matches

    def retry(self) -> bool:
        """Apply what is declared now again (after a failure); True when its version is in service."""
        record = self.declared
        return record is not None and self.apply(record)
