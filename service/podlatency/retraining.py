"""Retraining from observed samples, published only when it is not worse than the model in service.

Every ``interval_s`` the retrainer checks whether at least ``min_new_samples`` samples arrived since
its last attempt. If so it trains a candidate on the kept samples, scores the candidate and the
active model on the held-out slice (mean absolute error per target), and publishes the candidate
only if no target's error is worse than the active model's by more than ``tolerance``. (The llm-d
predictor publishes every retrain blindly.) Old versions beyond ``keep_versions`` are deleted.

Publishing is a :class:`Publisher`'s job: on a model folder (:class:`FolderPublisher`) it stores,
activates and hot-swaps the candidate; in a cluster (:mod:`podlatency.kube`) only the leader trainer
publishes, by declaring the version in the release's ConfigMap, unless an operator pinned it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from podlatency.bundle import ModelBundle
from podlatency.dataplane import PredictionService
from podlatency.metrics import service_metrics
from podlatency.periodic import PeriodicTask
from podlatency.predictor import Predictor
from podlatency.samples import SampleStore
from podlatency.training import TrainingOptions, TrainingSet, evaluate, train_bundle

logger = logging.getLogger(__name__)

MIN_HOLDOUT_ROWS = 20


@dataclass(frozen=True, slots=True)
class RetrainPolicy:
    """When to retrain and what to publish."""

    interval_s: float = 60.0
    min_new_samples: int = 500
    tolerance: float = 0.05
    keep_versions: int = 5


@dataclass(frozen=True, slots=True)
class RetrainOutcome:
    """What one retraining attempt did, and why."""

    published: bool
    reason: str
    version: str | None = None
    candidate_mae: dict[str, float] | None = None
    active_mae: dict[str, float] | None = None


def holdout_scores(bundle: ModelBundle, holdout: TrainingSet) -> dict[str, dict[str, float]]:
    """Per target, the held-out error measures (MAE, MAPE; coverage and pinball loss for quantile models)."""
    predicted = Predictor(bundle, "cpu", nthread=1).predict_all(holdout.features)
    options = TrainingOptions(objective=bundle.objective, quantile_alpha=bundle.quantile_alpha or 0.9)
    return {target: evaluate(holdout.targets[target], predicted[target], options) for target in predicted}


class Publisher(Protocol):
    """Where a retrained model goes."""

    def leads(self) -> bool:
        """Whether this process may retrain and publish now (one trainer of several leads)."""
        ...

    def publish(self, bundle: ModelBundle) -> bool:
        """Store ``bundle`` and roll it out; False when something (a pin) keeps it from being published."""
        ...


class FolderPublisher:
    """Publishes into the model folder: store, activate (predictors watching the folder follow), serve."""

    def __init__(self, service: PredictionService) -> None:
        self.service = service

    def leads(self) -> bool:
        """One process owns a model folder: always."""
        return True

    def publish(self, bundle: ModelBundle) -> bool:
        """Store and activate ``bundle``, and serve it here at once."""
        self.service.registry.save(bundle, activate=True)
        self.service.serve_bundle(bundle)
        return True


class Retrainer:
    """Retrains a service's model from a sample store, on a background thread or on demand."""

    def __init__(
        self,
        service: PredictionService,
        store: SampleStore,
        policy: RetrainPolicy,
        options: TrainingOptions,
        publisher: Publisher | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.policy = policy
        self.options = options
        self.publisher: Publisher = publisher or FolderPublisher(service)
        # Samples replayed from disk count as new: after a restart they may not have been trained on.
        self._seen_at_last_attempt = 0
        self._task = PeriodicTask("retrainer", policy.interval_s, self.run_once)
        self._lock = threading.Lock()

    def run_once(self) -> RetrainOutcome:
        """One attempt: train, evaluate against the active model, publish if not worse."""
        with self._lock:
            if not self.publisher.leads():
                return RetrainOutcome(False, "standby trainer: the leader retrains")
            new_samples = self.store.seen - self._seen_at_last_attempt
            if new_samples < self.policy.min_new_samples:
                return RetrainOutcome(
                    False, f"{new_samples} new samples, waiting for {self.policy.min_new_samples}"
                )
            self._seen_at_last_attempt = self.store.seen
            holdout = self.store.training_set(holdout=True)
            if len(holdout.features) < MIN_HOLDOUT_ROWS:
                return RetrainOutcome(False, f"only {len(holdout.features)} held-out samples to evaluate on")
            candidate = train_bundle(self.store.training_set(), self.options, source="observed-samples")
            candidate_scores = holdout_scores(candidate, holdout)
            candidate_mae = {target: scores["mae_ms"] for target, scores in candidate_scores.items()}
            serving = self.service.holder.current_or_none()
            active = serving.bundle if serving is not None else None
            active_scores = holdout_scores(active, holdout) if active is not None else None
            self._record(candidate.version, candidate_scores)
            active_mae = None
            if active is not None and active_scores is not None:
                self._record(active.version, active_scores)
                active_mae = {target: scores["mae_ms"] for target, scores in active_scores.items()}
                worse = [
                    target
                    for target, error in candidate_mae.items()
                    if error > active_mae[target] * (1 + self.policy.tolerance)
                ]
                if worse:
                    reason = f"candidate {candidate.version} is worse on {', '.join(worse)}; not published"
                    logger.info(reason)
                    return RetrainOutcome(False, reason, candidate.version, candidate_mae, active_mae)
            if not self.publisher.publish(candidate):
                reason = f"candidate {candidate.version} is not worse, but the version is pinned; stored only"
                logger.info(reason)
                return RetrainOutcome(False, reason, candidate.version, candidate_mae, active_mae)
            self.service.registry.prune(self.policy.keep_versions)
            logger.info(
                "published %s (held-out MAE %s, was %s)", candidate.version, candidate_mae, active_mae
            )
            return RetrainOutcome(True, "published", candidate.version, candidate_mae, active_mae)

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
