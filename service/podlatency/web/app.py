"""The Litestar application factory."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusController
from opentelemetry.sdk.trace import TracerProvider

from podlatency import __version__
from podlatency.dataplane import PredictionService
from podlatency.metrics import service_metrics
from podlatency.retraining import FolderPublisher, Publisher, Retrainer, RetrainPolicy
from podlatency.samples import SampleStore
from podlatency.settings import Settings
from podlatency.tracing import TRACER_NAME, build_tracer_provider
from podlatency.training import TrainingOptions
from podlatency.watcher import ActiveVersionWatcher
from podlatency.web import health, routes_llmd, routes_models, routes_samples, routes_v1
from podlatency.web.errors import EXCEPTION_HANDLERS
from podlatency.web.phases import EdgeMiddleware

if TYPE_CHECKING:
    from podlatency.cluster.rollout import ClusterRollout

logger = logging.getLogger(__name__)


def build_retrainer(
    settings: Settings, service: PredictionService, samples: SampleStore, publisher: Publisher
) -> Retrainer:
    """The retrainer the settings describe."""
    return Retrainer(
        service,
        samples,
        RetrainPolicy(
            interval_s=settings.retrain_interval_s,
            min_new_samples=settings.retrain_min_samples,
            tolerance=settings.retrain_tolerance,
            keep_versions=settings.keep_versions,
        ),
        TrainingOptions(quantile_alpha=settings.quantile_alpha),
        publisher,
        objective=settings.objective,
    )


def role_routes(*, predicts: bool, trains: bool, batching: bool = True) -> list[Any]:
    """The routes of a role: read-only ones for all, predictions for predictors, samples for trainers.

    ``/v1/predict``, ``/predict`` and ``/predict/bulk/strict`` have one handler for each batching
    setting (the setting holds for the process).
    """
    routes: list[Any] = [
        health.healthz,
        health.readyz,
        routes_v1.model_info,
        routes_llmd.root,
        routes_llmd.status,
        routes_llmd.reload,
        routes_models.list_versions,
        routes_models.bundle_archive,
        routes_models.llmd_list,
        routes_models.llmd_info,
        routes_models.llmd_download,
        routes_models.llmd_download_info,
        routes_models.ttft_trees,
        routes_models.tpot_trees,
        routes_models.llmd_export,
        PrometheusController,
    ]
    if predicts:
        routes += [
            routes_v1.predict_batched if batching else routes_v1.predict,
            routes_llmd.predict_one_batched if batching else routes_llmd.predict_one,
            routes_llmd.predict_bulk_strict_batched if batching else routes_llmd.predict_bulk_strict,
            routes_llmd.predict_bulk,
        ]
    if trains:
        routes += [
            routes_samples.add_samples,
            routes_samples.add_training_data_bulk,
            routes_samples.data_status,
            routes_samples.flush,
            routes_samples.retrain,
        ]
    return routes


def bring_up_model(service: PredictionService, cluster: ClusterRollout | None) -> None:
    """Put a model in service at start-up.

    On a model folder, a stored model is loaded before the server accepts connections (a fraction
    of a second: no worker of several answers 503 while its siblings are ready); an empty folder
    gets the embedded default, trained in the background while probes answer 503. In a cluster, in
    the background: the declared version (downloaded if need be), else the embedded default; then
    the rollout loops start.
    """
    if cluster is not None:

        def follow_cluster() -> None:
            if not cluster.sync_once():
                service.bootstrap()
            cluster.start()

        threading.Thread(target=follow_cluster, name="podlatency-model-loader", daemon=True).start()
    elif service.registry.active_version() is not None:
        service.bootstrap()
    else:
        threading.Thread(target=service.bootstrap, name="podlatency-model-loader", daemon=True).start()


def create_app(
    settings: Settings,
    tracer_provider: TracerProvider | None = None,
    *,
    load_model: bool = True,
) -> Litestar:
    """Build the app. ``tracer_provider`` is injectable (tests pass one with an in-memory exporter).

    With ``load_model`` a stored model is loaded during start-up, before connections are accepted;
    when there is none, the embedded default is trained in a background thread, so the server answers
    probes at once and ``/readyz`` says 503 until it is ready.
    """
    owns_provider = tracer_provider is None
    provider = tracer_provider or build_tracer_provider()
    service = PredictionService(settings, provider.get_tracer(TRACER_NAME))
    samples = SampleStore(settings.model_dir / "samples", settings.samples_per_bucket)
    predicts = settings.role in ("both", "predictor")
    trains = settings.role in ("both", "trainer")
    cluster = None
    if settings.rollout_configmap:
        # Imported only in a cluster: the kubernetes client is not needed on a model folder.
        from podlatency.cluster.rollout import ClusterRollout  # noqa: PLC0415

        cluster = ClusterRollout(settings, service, samples if trains else None)
    publisher: Publisher = cluster or FolderPublisher(service)
    retrainer = build_retrainer(settings, service, samples, publisher)
    state = State(
        {
            "settings": settings,
            "service": service,
            "samples": samples,
            "retrainer": retrainer,
            "publisher": publisher,
        }
    )
    route_handlers = role_routes(predicts=predicts, trains=trains, batching=settings.batching)
    watcher = ActiveVersionWatcher(service, settings.watch_interval_s)
    if settings.variants and predicts:
        # Imported only when on: the baselines need pandas, which serving does not.
        from podlatency.baselines import routes as baseline_routes  # noqa: PLC0415
        from podlatency.baselines.models import BaselineModels  # noqa: PLC0415

        route_handlers += baseline_routes.ROUTES
        state.baseline_models = BaselineModels(settings.nthread)
        state.dedicated_pool = ThreadPoolExecutor(
            baseline_routes.DEDICATED_POOL_WORKERS, thread_name_prefix="baseline-dedicated-"
        )

    def start(app: Litestar) -> None:
        # Litestar runs sync handlers with run_in_executor on the loop's default executor.
        state.handler_pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="podlatency-handler")
        state.loop = asyncio.get_running_loop()  # where batched predictions are answered
        state.loop.set_default_executor(state.handler_pool)
        if trains and settings.retrain_interval_s > 0:
            retrainer.start()
        if load_model:
            bring_up_model(service, cluster)
        if cluster is not None:
            return
        if settings.watch_interval_s > 0:
            watcher.start()

    def stop(app: Litestar) -> None:
        retrainer.stop()
        watcher.stop()
        if cluster is not None:
            cluster.stop()
        if settings.variants and predicts:
            state.dedicated_pool.shutdown(wait=True)
        state.handler_pool.shutdown(wait=False)
        service.span_writer.close()
        if owns_provider:
            provider.shutdown()  # flushes spans still in the batch processor

    return Litestar(
        route_handlers=route_handlers,
        middleware=[EdgeMiddleware(service.tracer, settings.max_in_flight)],
        request_max_body_size=settings.max_body_bytes,
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(title="podlatency", version=__version__, path="/schema"),
        state=state,
        on_startup=[start],
        on_shutdown=[stop],
    )


def freeze_startup_heap() -> int:
    """Take the objects that exist now (imported modules, the app) out of the cyclic collector's sight.

    A full collection walks every tracked object: in a serving process that is ~130,000 objects that
    live as long as the process, and each walk held the GIL for 65-80 ms, every few seconds under
    load (every request in flight waited it out: the p99 at 32 clients). Frozen, a full collection
    walks only what was made since (under 1 ms, measured). Reference counting still frees frozen
    objects; only cycles among them are never collected, and those are start-up objects that live as
    long as the process anyway. Returns how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    service_metrics().gc_frozen_objects.set(frozen)
    return frozen


def app_from_env() -> Litestar:
    """Factory for ``uvicorn --factory``: settings from ``PODLATENCY_*`` variables.

    Runs in each server process, so each one freezes its start-up heap (see :func:`freeze_startup_heap`).
    """
    app = create_app(Settings.from_env())
    freeze_startup_heap()
    return app
