"""One podlatency process: its components, built once from its settings, and the order they start and stop.

The HTTP layer (:func:`podlatency.web.app.create_app`) only wires routes onto a runtime that is handed
in; nothing here imports a web framework.

What a process runs depends on its role (``PODLATENCY_ROLE``): predictors serve predictions and follow
the model folder (:class:`~podlatency.watcher.ActiveVersionWatcher`), a trainer over HTTP
(:class:`~podlatency.http_follow.HttpFollower`, ``PODLATENCY_FOLLOW_URL``) or, in a cluster, the
rollout ConfigMap (:mod:`podlatency.cluster`); trainers keep observed samples, score them against the serving
model (:class:`~podlatency.learning.live_accuracy.LiveAccuracy`) and retrain
(:class:`~podlatency.learning.retraining.Retrainer`); ``both`` does all of it.

Start order: the live scorer and the retrainer's loop, then the model (a stored one before the server
accepts connections, the embedded default in the background), then the watcher; following a trainer,
its active version (else the model folder's, or the embedded default), then the follower's loop; in a
cluster the declared version, then the rollout loops. Stop order: the loops and the scorer, a compile in
progress, then tracing (the span writer, then the exporter, which flushes the spans still queued).
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import TYPE_CHECKING

from podlatency.engines.compiling import Compiler
from podlatency.http_follow import HttpFollower
from podlatency.learning.live_accuracy import LiveAccuracy
from podlatency.learning.publishing import FolderPublisher, Publisher
from podlatency.learning.retraining import Retrainer, RetrainPolicy
from podlatency.learning.samples import SampleStore
from podlatency.learning.training import TrainingOptions
from podlatency.metrics import service_metrics
from podlatency.prediction_service import PredictionService
from podlatency.settings import Settings
from podlatency.tracing.otel import Tracing
from podlatency.tracing.tail_sampling import slow_thresholds
from podlatency.watcher import ActiveVersionWatcher

if TYPE_CHECKING:
    from podlatency.cluster.rollout import ClusterRollout

logger = logging.getLogger(__name__)


class Runtime:
    """The components of one process. ``tracing`` is injectable (tests read spans from memory)."""

    def __init__(self, settings: Settings, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = tracing or Tracing.from_env(slow_thresholds(settings.trace_slow_ms))
        self.predicts = settings.role in ("both", "predictor")
        self.trains = settings.role in ("both", "trainer")
        compiler = None
        if self.predicts and settings.engine == "auto":
            compiler = Compiler(settings.compiled_folder, settings.compiler)
        self.service = PredictionService(settings, self.tracing, compiler=compiler)
        self.samples = SampleStore(
            settings.model_dir / "samples", settings.samples_per_bucket, recent_rows=settings.live_window
        )
        self.cluster: ClusterRollout | None = None
        if settings.rollout_configmap:
            # Imported only in a cluster: the kubernetes client is not needed on a model folder.
            from podlatency.cluster.rollout import ClusterRollout  # noqa: PLC0415

            self.cluster = ClusterRollout(settings, self.service, self.samples if self.trains else None)
        self.publisher: Publisher = self.cluster or FolderPublisher(self.service)
        self.retrainer = Retrainer(
            self.service,
            self.samples,
            RetrainPolicy(
                interval_s=settings.retrain_interval_s,
                min_new_samples=settings.retrain_min_samples,
                tolerance=settings.retrain_tolerance,
                keep_versions=settings.keep_versions,
            ),
            TrainingOptions(quantile_alpha=settings.quantile_alpha, quantiles=settings.served_quantiles),
            self.publisher,
            objective=settings.objective,
        )
        self.watcher = ActiveVersionWatcher(self.service, settings.watch_interval_s)
        self.http_follower = (
            HttpFollower(self.service, settings.follow_url, settings.watch_interval_s)
            if settings.follow_url
            else None
        )
        self.live: LiveAccuracy | None = None
        if self.trains:
            # Drift retrains at once where retraining is on (PODLATENCY_RETRAIN_INTERVAL_S > 0).
            on_drift = self.retrainer.on_drift if settings.retrain_interval_s > 0 else None
            self.live = LiveAccuracy(
                self.service.holder, settings.live_window, settings.drift_min_rows, on_drift=on_drift
            )
            self.service.live_report = self.live.report

    def start(self, *, load_model: bool = True) -> None:
        """Start the background loops and put a model in service (see the module's start order)."""
        if self.live is not None:
            self.live.start()
        if self.trains and self.settings.retrain_interval_s > 0:
            self.retrainer.start()
        if load_model:
            self._bring_up_model()
        if self.cluster is None and self.http_follower is None and self.settings.watch_interval_s > 0:
            self.watcher.start()

    def _bring_up_model(self) -> None:
        """Put a model in service: a stored one at once, else the embedded default in the background.

        A stored model loads in a fraction of a second, so no worker of several answers 503 while its
        siblings are ready; the embedded default trains while probes answer 503. Following a trainer, in
        the background: its active version (downloaded if need be), else the model folder's or the
        embedded default; then the follower's loop starts. In a cluster, in the background: the
        declared version (downloaded if need be), else the embedded default; then the rollout loops.
        """
        service, cluster, http_follower = self.service, self.cluster, self.http_follower
        if http_follower is not None:

            def follow_trainer() -> None:
                if not http_follower.check_once():
                    service.bootstrap()
                if self.settings.watch_interval_s > 0:
                    http_follower.start()

            threading.Thread(target=follow_trainer, name="podlatency-model-loader", daemon=True).start()
        elif cluster is not None:

            def follow_cluster() -> None:
                if not cluster.sync_once():
                    service.bootstrap()
                cluster.start()

            threading.Thread(target=follow_cluster, name="podlatency-model-loader", daemon=True).start()
        elif service.registry.active_version() is not None:
            service.bootstrap()
        else:
            threading.Thread(target=service.bootstrap, name="podlatency-model-loader", daemon=True).start()

    def stop(self) -> None:
        """Stop everything :meth:`start` started, and flush the spans still queued."""
        self.retrainer.stop()
        if self.live is not None:
            self.live.stop()
        self.watcher.stop()
        if self.http_follower is not None:
            self.http_follower.stop()
        if self.cluster is not None:
            self.cluster.stop()
        self.service.close()
        self.tracing.close()  # makes the spans still queued, and flushes the exporter


def freeze_startup_heap() -> int:
    """Take the objects that exist now (imported modules, the app) out of the cyclic collector's sight.

    A full collection walks every tracked object: in a serving process that is ~130,000 objects that
    live as long as the process, and each walk holds the GIL for tens of milliseconds, every few
    seconds under load (every request in flight waits it out). Frozen, a full collection walks only
    what was made since. Reference counting still frees frozen objects; only cycles among them are
    never collected, and those are start-up objects that live as long as the process anyway. Returns
    how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    service_metrics().gc_frozen_objects.set(frozen)
    return frozen
