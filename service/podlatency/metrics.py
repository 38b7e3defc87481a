"""Prometheus metrics, registered once per process in the default registry.

Request counts and durations by route (:func:`route_metrics`, recorded by the HTTP layer's edge
middleware) and what only the core knows: phases, batches, the model in service.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

# Phases run from ~10 microseconds (frame) to tens of milliseconds under load.
PHASE_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10_000)
# A 7-pod request takes about half a millisecond; under load tens of milliseconds; a shed one less.
REQUEST_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServiceMetrics:
    """The core's metrics."""

    phase_seconds: Histogram
    rows_per_predict: Histogram
    requests_per_batch: Histogram
    batch_wait_seconds: Histogram
    active_model: Gauge
    holdout_error: Gauge
    model_load_failures: Counter
    model_rollouts: Counter
    requests_shed: Counter
    requests_in_flight: Gauge
    leader: Gauge
    gc_frozen_objects: Gauge
    training_samples: Gauge
    predict_engine: Gauge
    compiles: Counter
    compile_seconds: Gauge
    spans_dropped: Counter
    model_ready: Gauge
    samples_received: Counter
    retrains: Counter
    last_retrain: Gauge
    rollout_watching: Gauge
    rollout_configmap_exists: Gauge
    model_matches_declared: Gauge
    declared_mismatch_since: Gauge


@functools.cache
def service_metrics() -> ServiceMetrics:
    """The process-wide metrics (created on first use, so importing this module registers nothing)."""
    return ServiceMetrics(
        phase_seconds=Histogram(
            "podlatency_phase_duration_seconds",
            "Time spent in each phase of a prediction request, by route.",
            ["route", "phase"],
            buckets=PHASE_BUCKETS,
        ),
        rows_per_predict=Histogram(
            "podlatency_rows_per_predict",
            "Rows (pods) passed to one inplace_predict call.",
            buckets=ROW_BUCKETS,
        ),
        requests_per_batch=Histogram(
            "podlatency_requests_per_batch",
            "Requests coalesced into one predict call by the batcher.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128),
        ),
        batch_wait_seconds=Histogram(
            "podlatency_batch_wait_seconds",
            "Time a request's rows waited for their batch to start.",
            buckets=PHASE_BUCKETS,
        ),
        # A gauge rather than an Info metric: Info is not exported in multiprocess mode (several workers).
        active_model=Gauge(
            "podlatency_active_model_info",
            "The model bundle this process serves (1 for the active one).",
            ["device", "objective", "version"],
            multiprocess_mode="livemax",
        ),
        holdout_error=Gauge(
            "podlatency_model_holdout_error",
            "Error on the held-out observed samples by target, model version and measure "
            "(mae_ms, mape; coverage and pinball_loss for quantile models).",
            ["target", "version", "measure"],
            multiprocess_mode="livemax",
        ),
        model_load_failures=Counter(
            "podlatency_model_load_failures",
            "Model versions this process was told to serve and could not load.",
        ),
        model_rollouts=Counter(
            "podlatency_model_rollouts",
            "Declared model versions this process applied, by outcome (succeeded, failed).",
            ["outcome"],
        ),
        requests_shed=Counter(
            "podlatency_requests_shed",
            "Prediction requests answered 503 at once because the in-flight limit was reached.",
        ),
        requests_in_flight=Gauge(
            "podlatency_requests_in_flight",
            "Prediction requests in progress (what PODLATENCY_MAX_IN_FLIGHT bounds).",
            multiprocess_mode="livesum",
        ),
        leader=Gauge(
            "podlatency_trainer_leader",
            "1 while this trainer holds the leader Lease and publishes models, else 0.",
            multiprocess_mode="livemax",
        ),
        gc_frozen_objects=Gauge(
            "podlatency_gc_frozen_objects",
            "Objects moved out of the garbage collector's sight at start-up (gc.freeze).",
            multiprocess_mode="livemax",
        ),
        # llm-d's name and labels (its router reads `model` and `bucket`; its dashboards the three regimes).
        training_samples=Gauge(
            "training_samples_count",
            "Observed samples kept for training, by target (model) and regime (bucket 0-35 = "
            "queue_bucket x cache_bucket x prefix_bucket).",
            ["model", "bucket", "queue_bucket", "cache_bucket", "prefix_bucket"],
            multiprocess_mode="livemax",
        ),
        predict_engine=Gauge(
            "podlatency_predict_engine",
            "Which engine predicts calls of at least min_rows rows (compiled, xgboost, xgboost-gpu): 1 "
            "for each in use by the model in service.",
            ["engine", "min_rows"],
            multiprocess_mode="livemax",
        ),
        compiles=Counter(
            "podlatency_model_compiles",
            "Models brought to the compiled engine, by outcome: compiled, cached, failed, mismatch, "
            "superseded (another model replaced it first).",
            ["outcome"],
        ),
        compile_seconds=Gauge(
            "podlatency_model_compile_seconds",
            "Wall time of the last model compile (the compiler runs at the lowest CPU priority).",
            multiprocess_mode="livemax",
        ),
        spans_dropped=Counter(
            "podlatency_spans_dropped",
            "Spans of kept traces that were not exported, by reason (writer_full, export_queue_full, "
            "collector_failing, export_failed).",
            ["reason"],
        ),
        model_ready=Gauge(
            "podlatency_model_ready",
            "1 while this process has a model in service (what /readyz says), else 0.",
            multiprocess_mode="livemin",
        ),
        samples_received=Counter(
            "podlatency_samples_received",
            "Observed samples (rows) this trainer accepted for retraining.",
        ),
        retrains=Counter(
            "podlatency_retrains",
            "Retraining attempts by outcome (published, or kept: the model in service stays) and reason "
            "(samples: enough new ones arrived; drift: live accuracy drifted; request: POST /v1/retrain).",
            ["outcome", "reason"],
        ),
        last_retrain=Gauge(
            "podlatency_last_retrain_timestamp_seconds",
            "When this trainer last attempted a retrain (its start until then), in Unix seconds.",
            multiprocess_mode="livemax",
        ),
        rollout_watching=Gauge(
            "podlatency_rollout_watching",
            "1 while this process has the rollout ConfigMap's state and a watch on it; 0 while it "
            "cannot read or watch it (it retries with backoff).",
            multiprocess_mode="livemin",
        ),
        rollout_configmap_exists=Gauge(
            "podlatency_rollout_configmap_exists",
            "1 while the rollout ConfigMap exists, 0 while it is missing (no version can be declared; "
            "helm upgrade restores it).",
            multiprocess_mode="livemin",
        ),
        model_matches_declared=Gauge(
            "podlatency_model_matches_declared",
            "1 while this process serves the model version the rollout ConfigMap declares (or nothing "
            "is declared), 0 while it serves another.",
            multiprocess_mode="livemin",
        ),
        declared_mismatch_since=Gauge(
            "podlatency_model_declared_mismatch_since_timestamp_seconds",
            "Since when (Unix seconds) this process has served another version than the declared one; "
            "0 while they agree.",
            multiprocess_mode="livemax",
        ),
    )


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """llm-d's training-server metrics about the model in service, under llm-d's names."""

    model_type: Gauge
    objective_type: Gauge
    model_quantile: Gauge
    ensemble_active: Gauge
    ensemble_mode: Gauge
    importance: dict[str, Gauge]


@functools.cache
def model_metrics() -> ModelMetrics:
    """The llm-d-named model metrics (created on first use)."""
    return ModelMetrics(
        # llm-d labels this `type`; `model_type` is the label operators may look for first. Both are set.
        model_type=Gauge(
            "model_type",
            "The kind of model served (1 for it).",
            ["type", "model_type"],
            multiprocess_mode="livemax",
        ),
        objective_type=Gauge(
            "objective_type",
            "The training objective of the model served: mean or quantile (1 for it).",
            ["type"],
            multiprocess_mode="livemax",
        ),
        model_quantile=Gauge(
            "model_quantile",
            "The quantile predicted (the configured one, for a mean model, as llm-d reports it).",
            multiprocess_mode="livemax",
        ),
        ensemble_active=Gauge(
            "ensemble_active",
            "1 while an ensemble model serves; podlatency builds none.",
            multiprocess_mode="livemax",
        ),
        ensemble_mode=Gauge(
            "ensemble_mode",
            "1 when ensemble training is on; podlatency has none.",
            multiprocess_mode="livemax",
        ),
        importance={
            target: Gauge(
                f"{target}_importance",
                f"Share of the {target.upper()} model's total split gain by feature "
                f"(what drives {target.upper()} here).",
                ["feature"],
                multiprocess_mode="livemax",
            )
            for target in ("ttft", "tpot")
        },
    )


@functools.cache
def phase_histogram(route: str, phase: str) -> Histogram:
    """The phase-duration histogram child of ``route`` and ``phase``.

    Cached: looking a child up by its labels costs more than the observation itself, and requests
    name a handful of routes and phases.
    """
    return service_metrics().phase_seconds.labels(route, phase)


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """Request counts, durations and requests in progress, by method, route template and status."""

    total: Counter
    duration_seconds: Histogram
    in_progress: Gauge
    errors: Counter


@functools.cache
def request_metrics() -> RequestMetrics:
    """The per-route request metrics (the names Litestar's Prometheus middleware used)."""
    labels = ["app_name", "method", "path", "status_code"]
    return RequestMetrics(
        total=Counter("podlatency_requests_total", "Total requests", labels),
        duration_seconds=Histogram(
            "podlatency_request_duration_seconds",
            "Request duration, in seconds (exemplars: trace ids of kept requests, in OpenMetrics)",
            labels,
            buckets=REQUEST_BUCKETS,
        ),
        in_progress=Gauge(
            "podlatency_requests_in_progress",
            "Total requests currently in progress",
            labels,
            multiprocess_mode="livesum",
        ),
        errors=Counter("podlatency_requests_error_total", "Total errors in requests", labels),
    )


APP_NAME = "podlatency"


@dataclass(slots=True)
class RouteMetrics:
    """One route's request-metric children, looked up once: a lookup by labels costs more than a sample."""

    method: str
    route: str
    in_progress: Gauge
    _by_status: dict[int, tuple[Counter, Histogram, Counter | None]] = field(default_factory=dict)

    def answered(self, status: int, seconds: float, trace_id: str | None = None) -> None:
        """Count a request answered with ``status`` after ``seconds``.

        A request whose trace was kept leaves its ``trace_id`` as the duration's exemplar (shown when
        ``/metrics`` is scraped as OpenMetrics), so a latency panel links to the trace.
        """
        children = self._by_status.get(status)
        if children is None:
            metrics = request_metrics()
            labels = (APP_NAME, self.method, self.route, str(status))
            children = (
                metrics.total.labels(*labels),
                metrics.duration_seconds.labels(*labels),
                metrics.errors.labels(*labels) if status >= 500 else None,
            )
            self._by_status[status] = children
        total, duration, errors = children
        total.inc()
        duration.observe(seconds, {"trace_id": trace_id} if trace_id is not None else None)
        if errors is not None:
            errors.inc()


@functools.cache
def route_metrics(method: str, route: str) -> RouteMetrics:
    """The request metrics of ``method`` on ``route`` (a route template: a bounded set)."""
    in_progress = request_metrics().in_progress.labels(APP_NAME, method, route, "200")
    return RouteMetrics(method, route, in_progress)


@dataclass(frozen=True, slots=True)
class LiveMetrics:
    """Live accuracy of the serving model on observed rows (:mod:`podlatency.learning.live_accuracy`)."""

    scored: Counter
    unscored: Counter
    median_relative_error: Gauge
    mae_ms: Gauge
    coverage: Gauge
    drift: Gauge
    training_figure: Gauge


@functools.cache
def live_metrics() -> LiveMetrics:
    """The live-accuracy metrics, registered on first use (trainers only)."""
    window = "over the last PODLATENCY_LIVE_WINDOW observed rows, against the model in service"
    return LiveMetrics(
        scored=Counter(
            "podlatency_live_scored", "Observed rows scored against the serving model.", ["target"]
        ),
        unscored=Counter(
            "podlatency_live_unscored", "Observed rows accepted but not scored (scorer behind, or no model)."
        ),
        median_relative_error=Gauge(
            "podlatency_live_median_relative_error",
            f"Median of |predicted - actual| / actual {window}.",
            ["target"],
            multiprocess_mode="livemax",
        ),
        mae_ms=Gauge(
            "podlatency_live_mae_ms",
            f"Mean absolute error in ms {window}.",
            ["target"],
            multiprocess_mode="livemax",
        ),
        coverage=Gauge(
            "podlatency_live_coverage",
            f"Share of actuals at or below a quantile model's prediction {window}.",
            ["target"],
            multiprocess_mode="livemin",
        ),
        drift=Gauge(
            "podlatency_drift",
            "1 while the target's live accuracy has drifted from its training figures (docs/models.md).",
            ["target"],
            multiprocess_mode="livemax",
        ),
        training_figure=Gauge(
            "podlatency_live_training_figure",
            "The serving model's held-out figure at training (measure median_relative_error or coverage), "
            "which the live figures are compared with.",
            ["target", "measure"],
            multiprocess_mode="livemax",
        ),
    )
