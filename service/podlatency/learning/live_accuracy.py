"""Live accuracy: every observed row scored against the model that was serving when it arrived.

Each row a trainer accepts (``/v1/samples``, ``/add_training_data_bulk``) carries the features the
router saw when it scheduled the request and the latency that followed: a free accuracy check. The
request's rows are handed, with the model in service at that moment, to a scorer thread and the
request is answered at once; the scorer predicts each target for the rows it was observed on (an
actual of 0 is "not observed") and keeps them in a window of the last ``PODLATENCY_LIVE_WINDOW``.
Scoring a row costs more than half of what taking it in costs (docs/performance.md), so the scorer
works at most :data:`SCORER_SHARE` of the time: at a router's rates every row is scored; under a flood of
bulk requests the rows wait, and once :data:`QUEUE_ROWS` wait, a request's rows go unscored
(counted) rather than slow ingestion or hold memory.

Over the window, per target: the median relative error and the MAE; for quantile models also the
coverage (the share of actuals at or below the prediction) and the pinball loss; and the same per
load regime (the sample store's 36 regimes), so "wrong only under load" shows. A model coming into
service starts a new window: the figures are always the serving model's.

**Drift** is flagged for a target when its window holds at least ``PODLATENCY_DRIFT_MIN_ROWS`` rows
and either
- the live median relative error exceeds ``max(2 x training, training + 0.10)``, where training is
  the model's held-out median relative error at publish time; or
- (quantile models) the live coverage is below the quantile minus :data:`COVERAGE_SLACK`.
It clears when neither holds. Each episode is logged once with its figures.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from podlatency.engines.predictor import LoadedModel, ModelHolder
from podlatency.learning.samples import KV_EDGES, PREFIX_EDGES, QUEUE_EDGES, REGIMES, AnySample
from podlatency.metrics import live_metrics
from podlatency.schema import FEATURE_NAMES, TARGETS, feature_matrix

logger = logging.getLogger(__name__)

QUEUE_ROWS = 50_000
"""Rows waiting to be scored before further requests' rows go unscored (five full bulk requests)."""
SCORER_SHARE = 0.1
"""The most of the time the scorer works: after scoring for t seconds it rests 9t."""
REGIME_MIN_ROWS = 30
"""Rows a regime needs in the window before its figures are reported."""
ERROR_FACTOR, ERROR_MARGIN = 2.0, 0.10
"""Drift when the live median relative error exceeds max(factor x training, training + margin)."""
COVERAGE_SLACK = 0.05
"""Drift when a quantile model's live coverage is below its quantile by more than this."""

FloatArray = npt.NDArray[np.float64]

_WAITING, _KV, _PREFIX = (
    FEATURE_NAMES.index(name) for name in ("num_request_waiting", "kv_cache_percentage", "prefix_cache_score")
)


def regimes_of(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Each row's regime index (0-35), as :func:`podlatency.learning.samples.regime_index` numbers it."""
    queue_bucket = np.searchsorted(QUEUE_EDGES, matrix[:, _WAITING], side="right")
    cache_bucket = np.searchsorted(KV_EDGES, matrix[:, _KV], side="right")
    prefix_bucket = np.searchsorted(PREFIX_EDGES, matrix[:, _PREFIX], side="right")
    regime = (queue_bucket * (len(KV_EDGES) + 1) + cache_bucket) * (len(PREFIX_EDGES) + 1) + prefix_bucket
    return np.asarray(regime, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Figures:
    """Accuracy over some scored rows."""

    rows: int
    median_relative_error: float
    mae_ms: float
    coverage: float | None
    pinball_loss: float | None

    @classmethod
    def of(cls, predicted: FloatArray, actual: FloatArray, alpha: float | None) -> Figures:
        """The figures of ``predicted`` against ``actual`` (actuals above 0); quantile ones with ``alpha``."""
        error = actual - predicted
        coverage = pinball = None
        if alpha is not None:
            coverage = float(np.mean(actual <= predicted))
            pinball = float(np.mean(np.maximum(alpha * error, (alpha - 1.0) * error)))
        return cls(
            rows=len(actual),
            median_relative_error=float(np.median(np.abs(error) / actual)),
            mae_ms=float(np.mean(np.abs(error))),
            coverage=coverage,
            pinball_loss=pinball,
        )


@dataclass(frozen=True, slots=True)
class TargetLive:
    """One target's live accuracy under the serving model."""

    scored: int
    """Observed rows scored since the model came into service."""
    window: Figures | None
    """Over the last rows scored (None before the first)."""
    training: dict[str, float]
    """The model's held-out figures at publish time: median_relative_error, and coverage for quantiles."""
    by_regime: dict[str, Figures]
    """Regimes with at least :data:`REGIME_MIN_ROWS` rows in the window, by label."""
    drift: bool
    drift_reason: str | None


@dataclass(frozen=True, slots=True)
class LiveReport:
    """What ``/v1/model`` and ``/status`` show as ``live`` on a trainer."""

    scoring: bool
    model_version: str | None
    targets: dict[str, TargetLive]
    unscored_rows: int
    """Rows accepted but not scored: the scorer was behind, or no model was serving yet."""
    reason: str | None = None
    """Why there are no figures, when ``scoring`` is false."""


def regime_label(index: int) -> str:
    """A regime index as words: its queue, KV-cache and prefix-cache buckets."""
    prefixes = len(PREFIX_EDGES) + 1
    caches = len(KV_EDGES) + 1
    queue_bucket, rest = divmod(index, caches * prefixes)
    cache_bucket, prefix_bucket = divmod(rest, prefixes)
    waiting = ("0", "1-3", "4-15", "16+")[queue_bucket]
    cache = ("<0.5", "0.5-0.8", ">=0.8")[cache_bucket]
    prefix = ("0", "<0.5", ">=0.5")[prefix_bucket]
    return f"waiting {waiting}, kv {cache}, prefix {prefix}"


def figures_by_regime(
    predicted: FloatArray, actual: FloatArray, regimes: npt.NDArray[np.int64], alpha: float | None
) -> dict[str, Figures]:
    """The figures of each regime with at least :data:`REGIME_MIN_ROWS` rows, by label, least load first."""
    counts = np.bincount(regimes, minlength=REGIMES)
    return {
        regime_label(int(index)): Figures.of(predicted[regimes == index], actual[regimes == index], alpha)
        for index in np.flatnonzero(counts >= REGIME_MIN_ROWS)
    }


class _Window:
    """The last ``size`` scored rows of one target: predicted, actual and regime, in a ring."""

    def __init__(self, size: int) -> None:
        self.predicted = np.empty(size)
        self.actual = np.empty(size)
        self.regime = np.empty(size, dtype=np.int64)
        self.size = size
        self.filled = 0
        self.next = 0
        self.scored = 0

    def add(self, predicted: FloatArray, actual: FloatArray, regime: npt.NDArray[np.int64]) -> None:
        """Append rows, the oldest making room."""
        self.scored += len(actual)
        if len(actual) >= self.size:
            predicted, actual, regime = predicted[-self.size :], actual[-self.size :], regime[-self.size :]
        positions = (self.next + np.arange(len(actual))) % self.size
        self.predicted[positions], self.actual[positions], self.regime[positions] = predicted, actual, regime
        self.next = int((self.next + len(actual)) % self.size)
        self.filled = min(self.size, self.filled + len(actual))

    def figures(self, alpha: float | None) -> Figures | None:
        """The window's figures (None while it is empty)."""
        if self.filled == 0:
            return None
        return Figures.of(self.predicted[: self.filled], self.actual[: self.filled], alpha)

    def by_regime(self, alpha: float | None) -> dict[str, Figures]:
        """Each regime's figures, for regimes with at least :data:`REGIME_MIN_ROWS` rows in the window."""
        filled = self.filled
        return figures_by_regime(self.predicted[:filled], self.actual[:filled], self.regime[:filled], alpha)


class LiveAccuracy:
    """Scores observed rows against the serving model on its own thread, and keeps the figures."""

    def __init__(
        self,
        holder: ModelHolder,
        window: int,
        drift_min_rows: int,
        on_drift: Callable[[str, str], None] | None = None,
    ) -> None:
        self._holder = holder
        self._window_size = window
        self._drift_min_rows = drift_min_rows
        self._on_drift = on_drift
        self._queue: queue.Queue[tuple[LoadedModel, Sequence[AnySample]] | None] = queue.Queue()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._windows: dict[str, _Window] = {}
        self._drift: dict[str, str] = {}
        self._unscored = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start the scorer thread."""
        self._thread = threading.Thread(target=self._run, name="podlatency-live-scorer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the scorer (what is still queued is not scored)."""
        if self._thread is not None:
            self._stopping.set()
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, rows: Sequence[AnySample]) -> None:
        """Queue accepted rows with the model serving now; never blocks (rows go unscored instead)."""
        model = self._holder.current_or_none()
        with self._lock:
            room = self._thread is not None and self._queued_rows + len(rows) <= QUEUE_ROWS
            if model is not None and room:
                self._queued_rows += len(rows)
                self._queue.put((model, rows))  # the queue has no bound of its own: never blocks
                return
            self._unscored += len(rows)
        live_metrics().unscored.inc(len(rows))

    def wait_scored(self, timeout: float = 10.0) -> bool:
        """Until everything queued is scored (tests and benchmarks); False on timeout."""
        done = threading.Event()

        def join() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=join, daemon=True).start()
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None or self._stopping.is_set():
                    return
                started = time.perf_counter()
                self._score(*item)
                self._stopping.wait((time.perf_counter() - started) * (1 / SCORER_SHARE - 1))
            except Exception:
                logger.exception("scoring observed rows failed")
            finally:
                if item is not None:
                    with self._lock:
                        self._queued_rows -= len(item[1])
                self._queue.task_done()

    def _score(self, model: LoadedModel, rows: Sequence[AnySample]) -> None:
        """Predict each target for the rows it was observed on only (router rows observe one each)."""
        matrix = feature_matrix(rows)
        # One pass over the rows for both actuals, in TARGETS order (ttft, tpot).
        actuals = np.array([(row.actual_ttft_ms, row.actual_tpot_ms) for row in rows], dtype=np.float64)
        regimes = regimes_of(matrix)
        scored: dict[str, tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]] = {}
        for column, target in enumerate(TARGETS):
            observed = actuals[:, column] > 0
            if target in model.predictor.targets and observed.any():
                predicted = model.predictor.predict_target(target, matrix[observed])
                scored[target] = (predicted, actuals[observed, column], regimes[observed])
        alpha = model.bundle.quantile_alpha if model.bundle.objective == "quantile" else None
        with self._lock:
            if self._model is None or self._model.version != model.version:
                self._start_window(model)
            for target, (predicted, actual, regime) in scored.items():
                window = self._windows[target]
                window.add(predicted, actual, regime)
                live_metrics().scored.labels(target).inc(len(actual))
                self._publish(target, window.figures(alpha), model)

    def _start_window(self, model: LoadedModel) -> None:
        """A model came into service: its figures start from nothing."""
        self._model = model
        self._windows = {target: _Window(self._window_size) for target in model.predictor.targets}
        reference = live_metrics().training_figure
        reference.clear()
        for target in model.predictor.targets:
            for measure, value in training_figures(model, target).items():
                reference.labels(target, measure).set(value)
        for target in list(self._drift):
            self._set_drift(target, None, model)

    def _publish(self, target: str, figures: Figures | None, model: LoadedModel) -> None:
        if figures is None:
            return
        metrics = live_metrics()
        metrics.median_relative_error.labels(target).set(figures.median_relative_error)
        metrics.mae_ms.labels(target).set(figures.mae_ms)
        if figures.coverage is not None:
            metrics.coverage.labels(target).set(figures.coverage)
        self._set_drift(target, self._drift_reason(target, figures, model), model)

    def _drift_reason(self, target: str, figures: Figures, model: LoadedModel) -> str | None:
        """The module's drift rule; why it holds, or None."""
        if figures.rows < self._drift_min_rows:
            return None
        trained = training_figures(model, target)
        reasons = []
        if "median_relative_error" in trained:
            limit = max(
                ERROR_FACTOR * trained["median_relative_error"],
                trained["median_relative_error"] + ERROR_MARGIN,
            )
            if figures.median_relative_error > limit:
                reasons.append(
                    f"median relative error {figures.median_relative_error:.3f} > {limit:.3f} "
                    f"(held out at training: {trained['median_relative_error']:.3f})"
                )
        alpha = model.bundle.quantile_alpha
        if figures.coverage is not None and alpha is not None and figures.coverage < alpha - COVERAGE_SLACK:
            reasons.append(
                f"coverage {figures.coverage:.3f} < {alpha - COVERAGE_SLACK:.3f} (quantile {alpha:g})"
            )
        return f"{'; '.join(reasons)}, over the last {figures.rows} rows" if reasons else None

    def _set_drift(self, target: str, reason: str | None, model: LoadedModel) -> None:
        was = target in self._drift
        live_metrics().drift.labels(target).set(1 if reason else 0)
        if reason is None:
            if was:
                del self._drift[target]
                logger.info("%s of model %s: drift over", target, model.version)
            return
        self._drift[target] = reason
        if not was:
            logger.warning("%s of model %s drifted: %s", target, model.version, reason)
            if self._on_drift is not None:
                self._on_drift(target, reason)

    def report(self) -> LiveReport:
        """The serving model's live figures per target."""
        with self._lock:
            model = self._model
            if model is None:
                return LiveReport(True, None, {}, self._unscored)
            alpha = model.bundle.quantile_alpha if model.bundle.objective == "quantile" else None
            targets = {}
            for target, window in self._windows.items():
                targets[target] = TargetLive(
                    scored=window.scored,
                    window=window.figures(alpha),
                    training=training_figures(model, target),
                    by_regime=window.by_regime(alpha),
                    drift=target in self._drift,
                    drift_reason=self._drift.get(target),
                )
            return LiveReport(True, model.version, targets, self._unscored)


def training_figures(model: LoadedModel, target: str) -> dict[str, float]:
    """The model's held-out figures for ``target`` at publish time, in live terms."""
    metrics = model.bundle.metrics.get(target, {})
    figures = {}
    if "median_ape" in metrics:
        figures["median_relative_error"] = metrics["median_ape"]
    if "coverage" in metrics:
        figures["coverage"] = metrics["coverage"]
    return figures


NOT_SCORING = LiveReport(
    scoring=False,
    model_version=None,
    targets={},
    unscored_rows=0,
    reason="this process receives no observations (a predictor); the trainers score them: see a trainer's "
    "/v1/model or the podlatency_live_* metrics",
)
"""The report of a process that takes no samples."""
