"""The core every HTTP route calls: which model serves, and batched prediction with per-phase timing.

It knows nothing of HTTP: routes decode bodies into structs, call :meth:`PredictionService.predict`,
and encode what it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from podlatency.bundle import ModelBundle
from podlatency.engines.batching import BatchOutcome, Delivery, FloatMatrix, MicroBatcher
from podlatency.engines.compiling import Compiler
from podlatency.engines.predictor import LoadedModel, ModelHolder, Predictor, primary, resolve_device
from podlatency.errors import ModelLoadError, PodlatencyError, QuantileNotServed
from podlatency.learning.live_accuracy import NOT_SCORING, LiveReport
from podlatency.learning.training import TrainingOptions, embedded_default
from podlatency.metrics import model_metrics, service_metrics
from podlatency.registry import ModelRegistry
from podlatency.schema import PodMetrics, feature_matrix
from podlatency.settings import Settings
from podlatency.tracing.otel import Tracing
from podlatency.tracing.phase_spans import PhaseRecorder

logger = logging.getLogger(__name__)

MODEL_TYPE = "xgboost"
"""What llm-d's API calls the model kind (it also knows ``bayesian_ridge`` and ``lightgbm``)."""


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """In a cluster: what the rollout ConfigMap declares beside what this process serves."""

    configmap: str
    watching: bool
    """Whether this process has the ConfigMap's state and a watch on it (else it is retrying)."""
    declared_version: str | None
    """The declared version; ``None`` when nothing is declared or the ConfigMap is gone."""
    matches_declared: bool
    """The model in service is the declared one, or nothing is declared."""
    mismatch_seconds: float
    """How long the model in service has not been the declared one (0 while it is)."""


@dataclass(frozen=True, slots=True)
class Predictions:
    """Predicted latencies per target, row for row, and the model that made them.

    A model serving a set of quantiles gives a row of them per row (ascending, the bundle's
    ``quantiles``); :meth:`primary` is what a caller that asked for none gets.
    """

    by_target: dict[str, npt.NDArray[np.float64]]
    model: LoadedModel

    def primary(self, target: str) -> npt.NDArray[np.float64]:
        """``target``'s predictions at the primary quantile (or the mean), one per row."""
        return primary(self.by_target[target], self.model.bundle.primary_output)

    def at_quantiles(self, target: str, quantiles: Sequence[float]) -> npt.NDArray[np.float64]:
        """``target``'s predictions at served quantiles (:func:`check_quantiles`), a column per quantile."""
        values = self.by_target[target]
        if values.ndim == 1:
            return values[:, None].repeat(len(quantiles), axis=1)
        served = self.model.bundle.quantiles
        return values[:, [served.index(quantile) for quantile in quantiles]]


def check_quantiles(asked: Sequence[float], bundle: ModelBundle, field: str = "quantiles") -> None:
    """Refuse, naming the field, quantiles the bundle does not serve (:class:`QuantileNotServed`)."""
    served = bundle.quantiles
    if set(asked) <= set(served) and served:
        return
    listed = ", ".join(f"{value:g}" for value in served)
    if not served:
        raise QuantileNotServed(
            f"the model in service ({bundle.version}) predicts the {bundle.objective} latency and serves no "
            "quantiles (a quantile model does: PODLATENCY_OBJECTIVE=quantile)",
            field=field,
        )
    if len(asked) > len(served):
        raise QuantileNotServed(
            f"{len(asked)} quantiles asked for; the model in service serves {len(served)}: {listed}",
            field=field,
        )
    for index, value in enumerate(asked):
        if value not in served:
            raise QuantileNotServed(
                f"quantile {value:g} is not served; the model in service serves {listed}",
                field=f"{field}[{index}]",
            )


class PredictionService:
    """Serves the active model of one model folder."""

    def __init__(
        self,
        settings: Settings,
        tracing: Tracing | None = None,
        registry: ModelRegistry | None = None,
        compiler: Compiler | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing or Tracing.to(None, sampler=ALWAYS_OFF)
        """Tracers, span writer and slow thresholds (by default: nothing recorded)."""
        self.registry = registry or ModelRegistry(settings.model_dir)
        self.holder = ModelHolder()
        self.device = resolve_device(settings.device)
        service_metrics().model_ready.set(0)  # until a model is in service
        self.compiler = compiler
        """Brings each model in service to compiled trees in the background (None: XGBoost only)."""
        self.rollout_status: Callable[[], RolloutStatus] | None = None
        """In a cluster, set by the rollout loops: the declared version beside the served one."""
        self.live_report: Callable[[], LiveReport] = lambda: NOT_SCORING
        """The serving model's live accuracy on observed rows; set by the runtime on trainers."""

    def phase_recorder(self, route: str) -> PhaseRecorder:
        """A recorder for one request's phases on ``route``, tagged with the device."""
        return PhaseRecorder(
            self.tracing.head, self.tracing.writer, route, {"podlatency.device": self.device}
        )

    def predict(self, rows: Sequence[PodMetrics], phases: PhaseRecorder) -> Predictions:
        """All rows in one matrix, one ``inplace_predict`` per target.

        With batching on, the call is shared with whatever other requests are in flight, and this
        thread waits for it.
        """
        model = self.holder.current()
        matrix = self._frame(rows, model, phases)
        if model.batcher is None:
            by_target, times = model.predictor.predict_timed(matrix)
            service_metrics().rows_per_predict.observe(len(rows))
            for target, (started_ns, ended_ns) in times.items():
                phases.record(f"predict_{target}", started_ns, ended_ns)
        else:
            by_target = self.record_batch(model.batcher.submit(matrix), phases)
        return Predictions(by_target=by_target, model=model)

    def predict_later(
        self, rows: Sequence[PodMetrics], phases: PhaseRecorder, deliver: Delivery, *, may_lead: bool = True
    ) -> LoadedModel:
        """Queue the rows on the model's batcher and return without waiting for their batch.

        ``deliver`` gets the outcome from the thread that runs the batch (this one, before returning,
        when the batcher was idle); :meth:`record_batch` turns it into phases and predictions. Only
        with batching on (the routes that call it are chosen by ``PODLATENCY_BATCHING``).
        """
        model = self.holder.current()
        if model.batcher is None:
            raise RuntimeError("predict_later needs a batching model (PODLATENCY_BATCHING=true)")
        model.batcher.submit_nowait(self._frame(rows, model, phases), deliver, may_lead=may_lead)
        return model

    @staticmethod
    def _frame(rows: Sequence[PodMetrics], model: LoadedModel, phases: PhaseRecorder) -> FloatMatrix:
        phases.attributes |= {"podlatency.pods": len(rows), "podlatency.model_version": model.version}
        with phases.phase("frame"):
            return feature_matrix(rows)

    @staticmethod
    def record_batch(outcome: BatchOutcome, phases: PhaseRecorder) -> dict[str, npt.NDArray[np.float64]]:
        """Note a batched request's phases: its wait, the batch's predict calls, and its resumption.

        ``resume`` runs from the batch's end to now: the hand-back to the request (a woken thread,
        or the event loop picking up the result).
        """
        phases.attributes |= {
            "podlatency.batch_rows": outcome.batch_rows,
            "podlatency.batch_requests": outcome.batch_requests,
        }
        phases.record("batch_wait", outcome.queued_ns, outcome.batch_started_ns)
        service_metrics().batch_wait_seconds.observe((outcome.batch_started_ns - outcome.queued_ns) / 1e9)
        for target, (started_ns, ended_ns) in outcome.target_times_ns.items():
            phases.record(f"predict_{target}", started_ns, ended_ns)
        phases.record("resume", outcome.batch_ended_ns, time.time_ns())
        return outcome.by_target

    @staticmethod
    def _observe_batch(rows: int, requests: int) -> None:
        metrics = service_metrics()
        metrics.rows_per_predict.observe(rows)
        metrics.requests_per_batch.observe(requests)

    # -- model lifecycle -------------------------------------------------------------------------

    def serve_bundle(self, bundle: ModelBundle) -> LoadedModel:
        """Put ``bundle`` in service on this process's device, warmed up."""
        predictor = Predictor(bundle, self.device, self.settings.nthread, self.settings.gpu_min_rows)
        predictor.warm_up()
        batcher = None
        if self.settings.batching:
            batcher = MicroBatcher(
                predictor.predict_timed,
                max_rows=self.settings.batch_max_rows,
                max_wait_s=self.settings.batch_max_wait_ms / 1000,
                on_batch=self._observe_batch,
            )
        loaded = LoadedModel(predictor, batcher, reported_quantile(bundle, self.settings.quantile_alpha))
        previous = self.holder.swap(loaded)
        if previous is not None and previous.batcher is not None:
            previous.batcher.close()
        service_metrics().model_ready.set(1)
        active_model = service_metrics().active_model
        active_model.clear()
        active_model.labels(device=self.device, objective=bundle.objective, version=bundle.version).set(1)
        publish_model_metrics(bundle, self.settings.quantile_alpha)
        self._publish_engines(loaded)
        if previous is None or previous.version != bundle.version:
            logger.info("serving model %s (%s, %s)", bundle.version, bundle.objective, self.device)
        self._compile(loaded)
        return loaded

    def _compile(self, loaded: LoadedModel) -> None:
        """Start bringing ``loaded`` to compiled trees; its engine metric follows when it switches."""
        bundle_folder = self.registry.bundle_dir(loaded.version)
        if self.compiler is None or not bundle_folder.is_dir():
            return
        self.compiler.prune(set(self.registry.versions()))
        switched = self.compiler.start(loaded.predictor, bundle_folder)
        switched.add_done_callback(lambda _: self._publish_engines(loaded))

    def _publish_engines(self, loaded: LoadedModel) -> None:
        """``podlatency_predict_engine`` for the model in service (a replaced model's switch is not news)."""
        if self.holder.current_or_none() is not loaded:
            return
        gauge = service_metrics().predict_engine
        gauge.clear()
        for engine, min_rows in loaded.predictor.engines().items():
            gauge.labels(engine=engine, min_rows=str(min_rows)).set(1)

    def close(self) -> None:
        """Stop a compile in progress (the process is stopping)."""
        if self.compiler is not None:
            self.compiler.close()

    def reload(self) -> LoadedModel:
        """Load the folder's active version; on any fault the current model keeps serving."""
        bundle = self.registry.load_active()
        if bundle is None:
            raise ModelLoadError(f"no active model in {self.registry.model_dir}")
        return self.serve_bundle(bundle)

    def train_default(self) -> ModelBundle:
        """Train the embedded default from the synthetic workload and make it the active version."""
        logger.info("no model in %s: training the embedded default", self.registry.model_dir)
        objective = "mean" if self.settings.objective == "auto" else self.settings.objective
        options = TrainingOptions(
            objective=objective,
            quantile_alpha=self.settings.quantile_alpha,
            quantiles=self.settings.served_quantiles,
        )
        bundle = embedded_default(self.settings.default_samples, options)
        self.registry.save(bundle, activate=True)
        return bundle

    def bootstrap(self) -> None:
        """Start-up: serve the active model, training the embedded default when there is none."""
        try:
            bundle = self.registry.load_active()
            if bundle is None:
                self.holder.mark_unavailable("training the embedded default model")
                bundle = self.train_default()
            self.serve_bundle(bundle)
        except PodlatencyError as error:
            self.holder.mark_unavailable(error.detail)
            logger.error("no model can be served: %s", error.detail)
        except Exception as error:
            self.holder.mark_unavailable(f"unexpected error while loading the model: {error}")
            logger.exception("no model can be served")


def reported_quantile(bundle: ModelBundle | None, configured_alpha: float) -> float:
    """The quantile llm-d's API reports: the model's for a quantile model, else the configured one."""
    if bundle is not None and bundle.quantile_alpha is not None:
        return bundle.quantile_alpha
    return configured_alpha


def publish_model_metrics(bundle: ModelBundle, configured_alpha: float) -> None:
    """llm-d's model metrics for the bundle now in service: type, objective, quantile, feature importance."""
    metrics = model_metrics()
    metrics.model_type.clear()
    metrics.model_type.labels(MODEL_TYPE, MODEL_TYPE).set(1)
    metrics.objective_type.clear()
    metrics.objective_type.labels(bundle.objective).set(1)
    metrics.model_quantile.set(reported_quantile(bundle, configured_alpha))
    metrics.ensemble_active.set(0)
    metrics.ensemble_mode.set(0)
    for target, gauge in metrics.importance.items():
        gauge.clear()
        if target in bundle.boosters:
            for feature, share in bundle.feature_importance(target).items():
                gauge.labels(feature).set(share)
