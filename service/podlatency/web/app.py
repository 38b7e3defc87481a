"""The Litestar application: routes, middleware and error handlers wired onto a :class:`Runtime`.

The runtime (:mod:`podlatency.runtime`) owns the process's components and their start and stop;
routes receive the ones they need as typed Litestar dependencies (``service``, ``samples``,
``publisher``, ``retrainer``, and on trainers ``live``). Code outside the package adds routes as
:mod:`extensions <podlatency.web.extensions>`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.types import Middleware

from podlatency import __version__
from podlatency.learning.live_accuracy import LiveAccuracy
from podlatency.learning.publishing import Publisher
from podlatency.learning.retraining import Retrainer
from podlatency.learning.samples import SampleStore
from podlatency.prediction_service import PredictionService
from podlatency.runtime import Runtime, freeze_startup_heap
from podlatency.settings import Settings
from podlatency.web import health, routes_llmd, routes_models, routes_samples, routes_v1
from podlatency.web.edge import PREDICTION_PATHS, EdgeMiddleware
from podlatency.web.errors import EXCEPTION_HANDLERS
from podlatency.web.extensions import Extension, extensions_from_settings
from podlatency.web.leader import ForwardToLeader
from podlatency.web.openapi import document_with

logger = logging.getLogger(__name__)


BATCHING_OFF_PREDICTIONS: tuple[HTTPRouteHandler, ...] = (
    routes_v1.predict,
    routes_llmd.predict_one,
    routes_llmd.predict_bulk_strict,
)
"""The prediction routes with batching off; with it on, they document the batched ones (plain ASGI)."""


def role_routes(
    *, predicts: bool, trains: bool, service: PredictionService | None = None
) -> list[BaseRouteHandler]:
    """The routes of a role: read-only ones for all, predictions for predictors, samples for trainers.

    ``/v1/predict``, ``/predict`` and ``/predict/bulk/strict`` have one handler for each batching
    setting (the setting holds for the process): given the ``service`` (batching on), they are its
    batched handlers, plain ASGI (:mod:`podlatency.web.batched`); without, the batching-off ones.
    """
    routes: list[BaseRouteHandler] = [
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
        health.metrics,
    ]
    if predicts:
        if service is None:
            routes += BATCHING_OFF_PREDICTIONS
        else:
            routes += [
                routes_v1.predict_batched(service),
                routes_llmd.predict_one_batched(service),
                routes_llmd.predict_bulk_strict_batched(service),
            ]
        routes.append(routes_llmd.predict_bulk)
    if trains:
        routes += [
            routes_samples.add_samples,
            routes_samples.add_training_data_bulk,
            routes_samples.data_status,
            routes_samples.flush,
            routes_samples.retrain,
        ]
    return routes


def dependencies_of(runtime: Runtime) -> dict[str, Provide]:
    """The runtime's components, by the parameter name routes take them as (each resolved once)."""

    def service() -> PredictionService:
        return runtime.service

    def samples() -> SampleStore:
        return runtime.samples

    def publisher() -> Publisher:
        return runtime.publisher

    def retrainer() -> Retrainer:
        return runtime.retrainer

    def live() -> LiveAccuracy | None:
        return runtime.live

    return {
        provider.__name__: Provide(provider, use_cache=True, sync_to_thread=False)
        for provider in (service, samples, publisher, retrainer, live)
    }


def create_app(
    runtime: Runtime, *, load_model: bool = True, extensions: Sequence[Extension] = ()
) -> Litestar:
    """Wire routes, middleware and error handlers onto ``runtime``; the app starts and stops it.

    ``extensions`` add their routes and dependencies; the app closes them when it stops, before the
    runtime.

    With ``load_model`` a stored model is loaded during start-up, before connections are accepted;
    when there is none, the embedded default is trained in a background thread, so the server answers
    probes at once and ``/readyz`` says 503 until it is ready.
    """
    settings = runtime.settings
    batched = runtime.service if settings.batching else None
    route_handlers = role_routes(predicts=runtime.predicts, trains=runtime.trains, service=batched)
    dependencies = dependencies_of(runtime)
    prediction_paths: tuple[str, ...] = PREDICTION_PATHS
    for extension in extensions:
        route_handlers += extension.routes
        dependencies |= extension.dependencies
        prediction_paths += extension.prediction_paths
    # Guards and error handlers read the settings; the handler pool is the web layer's own.
    state = State({"settings": settings})

    def start(app: Litestar) -> None:
        # Litestar runs sync handlers with run_in_executor on the loop's default executor.
        state.handler_pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="podlatency-handler")
        asyncio.get_running_loop().set_default_executor(state.handler_pool)
        runtime.start(load_model=load_model)

    def stop(app: Litestar) -> None:
        for extension in extensions:
            extension.close()
        runtime.stop()
        state.handler_pool.shutdown(wait=False)

    middleware: list[Middleware] = [EdgeMiddleware(runtime.tracing, settings.max_in_flight, prediction_paths)]
    if runtime.trains and runtime.cluster is not None:
        # Standby trainers send sample writes on to the leader the rollout ConfigMap names.
        middleware.append(
            ForwardToLeader(runtime.publisher, runtime.cluster.identity, settings.max_body_bytes)
        )
    app = Litestar(
        route_handlers=route_handlers,
        dependencies=dependencies,
        middleware=middleware,
        request_max_body_size=settings.max_body_bytes,
        exception_handlers=EXCEPTION_HANDLERS,
        # The document itself at /schema (and /schema/openapi.json, .yaml): a UI would load its scripts
        # from a CDN, which a cluster without internet access cannot reach.
        openapi_config=OpenAPIConfig(
            title="podlatency",
            version=__version__,
            description=api_description(settings),
            path="/schema",
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]), YamlRenderPlugin()],
        ),
        state=state,
        on_startup=[start],
        on_shutdown=[stop],
    )
    if runtime.predicts and batched is not None:
        document_with(app, BATCHING_OFF_PREDICTIONS, dependencies)
    return app


def api_description(settings: Settings) -> str:
    """The OpenAPI document's description: what this deployment's models serve."""
    quantiles = ", ".join(f"{value:g}" for value in settings.served_quantiles)
    return (
        "Per-pod TTFT and TPOT predictions for LLM request routing, with the llm-d latency predictor's "
        f"API beside `/v1`. A quantile model trained here serves the quantiles {quantiles} "
        f"(primary {settings.quantile_alpha:g}); `GET /v1/model` lists those of the model in service."
    )


def app_from_env() -> Litestar:
    """Factory for ``uvicorn --factory``: settings and extensions from ``PODLATENCY_*`` variables.

    Runs in each server process, so each one freezes its start-up heap (see :func:`freeze_startup_heap`).
    """
    runtime = Runtime(Settings.from_env())
    app = create_app(runtime, extensions=extensions_from_settings(runtime))
    freeze_startup_heap()
    return app
