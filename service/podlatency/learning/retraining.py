"""Retraining from observed samples, published only when it is not worse than the model in service.

Every ``interval_s`` the retrainer checks whether at least ``min_new_samples`` samples arrived since
its last attempt. If so it trains a candidate booster for each target that has enough observed rows
(each on its own rows: an actual of 0 is "not observed", see :mod:`podlatency.learning.samples`), and compares
it with the active model's booster on that target's held-out rows, like with like: mean absolute error
for mean models; pinball loss and coverage for quantile models, for each quantile of a set. A target's
candidate replaces the active booster unless it is worse by more than ``tolerance`` (for quantile
models, at any quantile, or its coverage of one strays further from that quantile than the active
one's, and more than 0.05); a target
without enough rows, or whose candidate lost, keeps the active booster. (The llm-d predictor publishes
every retrain blindly.) Old versions beyond ``keep_versions`` are deleted.

**The objective is the deployment's.** With ``PODLATENCY_OBJECTIVE=auto`` (the default) a retrain
keeps the active model's objective and quantile; set ``mean`` or ``quantile`` (and
``PODLATENCY_QUANTILE_ALPHA``) to choose them; the quantile set is ``PODLATENCY_QUANTILES``. A change
of objective or quantile set cannot be compared like with like: the candidate is published once every
target has enough rows, and the outcome says so.

Publishing is a :class:`Publisher`'s job: on a model folder (:class:`FolderPublisher`) it stores,
activates and hot-swaps the candidate; in a cluster (:mod:`podlatency.cluster`) only the leader trainer
publishes, by declaring the version in the release's ConfigMap, unless an operator pinned it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

from podlatency.bundle import ModelBundle
from podlatency.engines.predictor import Predictor
from podlatency.learning.publishing import FolderPublisher, Publisher
from podlatency.learning.samples import SampleStore
from podlatency.learning.training import (
    MIN_TRAINING_ROWS,
    TargetRows,
    TrainedTarget,
    TrainingOptions,
    assemble_bundle,
    evaluate,
    train_target,
)
from podlatency.metrics import service_metrics
from podlatency.periodic import PeriodicTask
from podlatency.prediction_service import PredictionService
from podlatency.schema import FEATURE_NAMES, TARGETS

logger = logging.getLogger(__name__)

MIN_HOLDOUT_ROWS = 20
GUARD_MEASURE = {"mean": "mae_ms", "quantile": "pinball_loss"}
COVERAGE_SLACK = 0.05
"""How far a quantile candidate's coverage may stray from the quantile when the active one's is closer."""


@dataclass(frozen=True, slots=True)
class RetrainPolicy:
    """When to retrain and what to publish."""

    interval_s: float = 60.0
    min_new_samples: int = 500
    tolerance: float = 0.05
    keep_versions: int = 5


@dataclass(frozen=True, slots=True)
class RetrainOutcome:
    """What one retraining attempt did, and why (per target in ``targets``)."""

    published: bool
    reason: str
    version: str | None = None
    objective: str | None = None
    quantile: float | None = None
    measure: str | None = None
    candidate: dict[str, float] = field(default_factory=dict)
    active: dict[str, float] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Verdict:
    """What an attempt found so far, per target; becomes its :class:`RetrainOutcome`."""

    objective: str
    quantile: float | None
    measure: str
    version: str | None = None
    candidate: dict[str, float] = field(default_factory=dict)
    active: dict[str, float] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    def outcome(self, published: bool, reason: str) -> RetrainOutcome:
        """The attempt's outcome."""
        return RetrainOutcome(
            published,
            reason,
            self.version,
            self.objective,
            self.quantile,
            self.measure,
            self.candidate,
            self.active,
            self.targets,
        )


def objective_for(objective: str, quantile_alpha: float, active: ModelBundle | None) -> tuple[str, float]:
    """The objective and quantile a new model is trained for.

    ``objective`` and ``quantile_alpha`` are the settings; with ``auto`` the active model's are kept
    (``mean`` when there is none).
    """
    if objective != "auto":
        return objective, quantile_alpha
    if active is not None and active.objective == "quantile" and active.quantile_alpha is not None:
        return "quantile", active.quantile_alpha
    return "mean", quantile_alpha


def holdout_scores(bundle: ModelBundle, holdout: dict[str, TargetRows]) -> dict[str, dict[str, float]]:
    """Per target with enough held-out rows, its error measures (see :func:`evaluate`)."""
    predictor = Predictor(bundle, "cpu", nthread=1)
    options = TrainingOptions(
        objective=bundle.objective, quantile_alpha=bundle.quantile_alpha or 0.9, quantiles=bundle.quantiles
    )
    return {
        target: evaluate(rows.observed_ms, predictor.predict_quantiles(target, rows.features), options)
        for target, rows in holdout.items()
        if len(rows) >= MIN_HOLDOUT_ROWS
    }


def candidate_scores(trained: TrainedTarget, rows: TargetRows, options: TrainingOptions) -> dict[str, float]:
    """A freshly trained target's held-out measures, its calibration applied."""
    return evaluate(rows.observed_ms, trained.latencies(rows.features), options)


class Retrainer:
    """Retrains a service's model from a sample store, on a background thread or on demand.

    ``options`` say how boosters are fitted; their objective and quantile are replaced by
    :func:`objective_for` (``objective`` is the ``PODLATENCY_OBJECTIVE`` setting) at each attempt.
    """

    def __init__(
        self,
        service: PredictionService,
        store: SampleStore,
        policy: RetrainPolicy,
        options: TrainingOptions,
        publisher: Publisher | None = None,
        *,
        objective: str = "auto",
    ) -> None:
        self.service = service
        self.store = store
        self.policy = policy
        self.options = options
        self.objective = objective
        self.publisher: Publisher = publisher or FolderPublisher(service)
        # Samples replayed from disk count as new: after a restart they may not have been trained on.
        self._seen_at_last_attempt = 0
        self._task = PeriodicTask("retrainer", policy.interval_s, self.run_once)
        self._lock = threading.Lock()
        self._drift_lock = threading.Lock()
        self._drifted: set[str] = set()
        self._drift_worker: threading.Thread | None = None
        service_metrics().last_retrain.set(time.time())  # "never" reads as "since start"

    def run_once(self, reason: str = "samples") -> RetrainOutcome:
        """One attempt: train per target, compare with the active model, publish what is not worse.

        ``reason`` is what the attempt is counted under: ``samples`` (the interval's check, which waits
        for ``min_new_samples`` new samples) or ``request`` (``POST /v1/retrain``: now, on the samples
        there are; a target still needs :data:`MIN_TRAINING_ROWS` training and
        :data:`MIN_HOLDOUT_ROWS` held-out rows).
        """
        with self._lock:
            if not self.publisher.leads():
                return RetrainOutcome(False, "standby trainer: the leader retrains")
            new_samples = self.store.seen - self._seen_at_last_attempt
            if reason != "request" and new_samples < self.policy.min_new_samples:
                return RetrainOutcome(
                    False, f"{new_samples} new samples, waiting for {self.policy.min_new_samples}"
                )
            return self._attempt_now(reason, recent=False)

    def on_drift(self, target: str, reason: str) -> None:
        """Live accuracy drifted: a retraining attempt at once, on its own thread (see :meth:`run_drift`).

        Drifts that arrive while one attempt runs make one more attempt after it, not one each.
        """
        with self._drift_lock:
            self._drifted.add(target)
            if self._drift_worker is not None and self._drift_worker.is_alive():
                return
            self._drift_worker = threading.Thread(
                target=self._retrain_while_drifted, name="podlatency-drift-retrain", daemon=True
            )
            self._drift_worker.start()

    def _retrain_while_drifted(self) -> None:
        while True:
            with self._drift_lock:
                if not self._drifted:
                    self._drift_worker = None
                    return
                targets, self._drifted = ", ".join(sorted(self._drifted)), set()
            try:
                self.run_drift(targets)
            except Exception:
                logger.exception("retraining after drift failed")

    def run_drift(self, targets: str) -> RetrainOutcome:
        """An attempt for drift: no wait for the interval or the sample count, on the recent rows only.

        Candidates learn from each target's last rows (the store's recent rows, as many as the live
        window), so they learn the fleet as it is now, and the guard compares them with the active
        model on the recent held-out rows, where a drifted fleet shows. The floor is the drift rule's
        own: a drifted target's live window had at least ``PODLATENCY_DRIFT_MIN_ROWS`` rows.
        ``targets`` names the drifted targets, for the log.
        """
        with self._lock:
            if not self.publisher.leads():
                return RetrainOutcome(False, "standby trainer: the leader retrains")
            logger.info("retrain: %s drifted; retraining on the recent rows now", targets)
            return self._attempt_now("drift", recent=True)

    def _attempt_now(self, reason: str, *, recent: bool) -> RetrainOutcome:
        """One attempt, counted under ``reason`` (the caller holds the lock)."""
        self._seen_at_last_attempt = self.store.seen
        serving = self.service.holder.current_or_none()
        outcome = self._attempt(serving.bundle if serving is not None else None, recent=recent)
        logger.info("retrain (%s): %s", reason, outcome.reason)
        metrics = service_metrics()
        metrics.retrains.labels("published" if outcome.published else "kept", reason).inc()
        metrics.last_retrain.set(time.time())
        return outcome

    def _attempt(self, active: ModelBundle | None, *, recent: bool = False) -> RetrainOutcome:
        objective, alpha = objective_for(self.objective, self.options.quantile_alpha, active)
        options = replace(self.options, objective=objective, quantile_alpha=alpha)
        verdict = Verdict(objective, alpha if objective == "quantile" else None, GUARD_MEASURE[objective])
        training = self.store.training_set(recent=recent).by_target
        holdout = self.store.training_set(holdout=True, recent=recent).by_target
        trained: dict[str, TrainedTarget] = {}
        for target in TARGETS:
            rows, held = len(training[target]), len(holdout[target])
            if rows < MIN_TRAINING_ROWS or held < MIN_HOLDOUT_ROWS:
                verdict.targets[target] = (
                    f"{rows} training and {held} held-out rows (needs {MIN_TRAINING_ROWS} and "
                    f"{MIN_HOLDOUT_ROWS}); keeps the active model"
                )
            else:
                trained[target] = train_target(target, training[target], options)
        if not trained:
            return verdict.outcome(False, "no target has enough observed rows")
        training_rows = max(len(training[target]) for target in trained)
        comparable = (
            active is not None
            and (active.objective, active.quantile_alpha) == (objective, verdict.quantile)
            and active.quantiles == options.served_quantiles()
            and active.feature_names == FEATURE_NAMES
            and active.log_latency == options.log_latency  # a bundle's targets share one output scale
        )
        if active is not None and comparable:
            kept = self._compare(active, trained, holdout, options, verdict)
            if not kept:
                return verdict.outcome(
                    False, f"the candidate is worse on {', '.join(trained)}; not published"
                )
            for target in TARGETS:
                if target not in kept:
                    kept[target] = TrainedTarget(
                        active.boosters[target],
                        active.prediction_scale.get(target),
                        active.metrics.get(target, {}),
                        active.load_trend.get(target, {}),
                        active.log_latency,
                    )
            return self._publish(assemble_bundle(kept, options, "observed-samples", training_rows), verdict)
        change = "no model in service" if active is None else f"the model in service is {describe(active)}"
        missing = [target for target in TARGETS if target not in trained]
        if missing:
            return verdict.outcome(
                False, f"{change}: a new model needs every target's rows, and {', '.join(missing)} lacks them"
            )
        verdict.targets |= dict.fromkeys(trained, "trained")
        candidate = assemble_bundle(trained, options, "observed-samples", training_rows)
        return self._publish(candidate, verdict, f"{change}; published without comparison")

    def _compare(
        self,
        active: ModelBundle,
        trained: dict[str, TrainedTarget],
        holdout: dict[str, TargetRows],
        options: TrainingOptions,
        verdict: Verdict,
    ) -> dict[str, TrainedTarget]:
        """The targets whose candidate is not worse than the active booster on their held-out rows."""
        measure = verdict.measure
        active_scores = holdout_scores(active, {target: holdout[target] for target in trained})
        self._record(active.version, active_scores)
        kept: dict[str, TrainedTarget] = {}
        for target, result in trained.items():
            scores = candidate_scores(result, holdout[target], options)
            verdict.candidate[target] = scores[measure]
            verdict.active[target] = active_scores[target][measure]
            worse = worse_than(scores, active_scores[target], options, self.policy.tolerance)
            verdict.targets[target] = (
                f"candidate {measure} {scores[measure]:.4g} vs active {active_scores[target][measure]:.4g}: "
                + (f"worse ({worse}); keeps the active model" if worse else "replaces the active model")
            )
            if not worse:
                kept[target] = result
                verdict.scores[target] = scores
        return kept

    def _publish(self, candidate: ModelBundle, verdict: Verdict, reason: str = "published") -> RetrainOutcome:
        verdict.version = candidate.version
        self._record(candidate.version, verdict.scores)
        if not self.publisher.publish(candidate):
            return verdict.outcome(
                False, f"candidate {candidate.version} is not worse, but the version is pinned; stored only"
            )
        self.service.registry.prune(self.policy.keep_versions)
        return verdict.outcome(True, reason)

    @staticmethod
    def _record(version: str, scores: dict[str, dict[str, float]]) -> None:
        gauge = service_metrics().holdout_error
        for target, measures in scores.items():
            for measure, value in measures.items():
                if measure != "holdout_rows":
                    gauge.labels(target=target, version=version, measure=measure).set(value)

    def start(self) -> None:
        """Run on a daemon thread every interval until :meth:`stop`."""
        self._task.start()

    def stop(self) -> None:
        """Stop the background thread."""
        self._task.stop()


def worse_than(
    candidate: dict[str, float], active: dict[str, float], options: TrainingOptions, tolerance: float
) -> str:
    """Why a target's candidate loses to the active booster on the same held-out rows ("" when it does not).

    Its guard measure more than ``tolerance`` higher; for a quantile model also, at every quantile of
    a set, its pinball loss more than ``tolerance`` higher, or its coverage further from the quantile
    than the active one's and more than :data:`COVERAGE_SLACK` away.
    """
    measure = GUARD_MEASURE[options.objective]
    if candidate[measure] > active[measure] * (1 + tolerance):
        return f"{measure} more than {tolerance:.0%} higher"
    quantiles = options.served_quantiles()
    for alpha in quantiles:
        # A set's quantiles each have their measures (``pinball_loss@0.99``); one alone has plain ones.
        suffix = f"@{alpha:g}" if len(quantiles) > 1 else ""
        loss, coverage = f"pinball_loss{suffix}", f"coverage{suffix}"
        if suffix and candidate[loss] > active[loss] * (1 + tolerance):
            return f"{loss} more than {tolerance:.0%} higher"
        if abs(candidate[coverage] - alpha) > max(abs(active[coverage] - alpha), COVERAGE_SLACK):
            return f"{coverage} {candidate[coverage]:.3f} is further from {alpha:g}"
    return ""


def describe(bundle: ModelBundle) -> str:
    """A model in words, as ``a p90 quantile model`` or ``a mean model trained without <features>``."""
    if len(bundle.quantiles) > 1:
        kind = f"a model of quantiles {', '.join(f'{value:g}' for value in bundle.quantiles)}"
    elif bundle.objective == "quantile" and bundle.quantile_alpha is not None:
        kind = f"a p{bundle.quantile_alpha * 100:g} quantile model"
    else:
        kind = f"a {bundle.objective} model"
    if bundle.feature_names != FEATURE_NAMES:
        kind += f" trained without {', '.join(bundle.ignored_features())}"
    if not bundle.log_latency:
        kind += " fitted on milliseconds (not monotone in load)"
    return kind
