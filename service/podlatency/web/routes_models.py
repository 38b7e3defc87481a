"""Stored model versions: ``/v1/models`` and the llm-d training server's model routes.

llm-d's prediction servers poll ``/model/{name}/info`` and download ``/model/{name}/download``; here
``name`` is a target (``ttft`` or ``tpot``) and the file is the active version's XGBoost UBJSON
booster, not llm-d's joblib file, so only podlatency predictors can load it.

The llm-d router polls ``/model/download/info`` every 60 s and, for an ``xgboost`` model, fetches
``/model/{ttft,tpot}/xgb/json``: the active booster's trees in XGBoost's own JSON dump (it stores them
and does not evaluate them). ``/model/export`` (llm-d's pickled seed bundle) is refused with 501:
podlatency never pickles; ``/v1/models/{version}/bundle`` exports a version.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import Parameter

from podlatency import llmd_schema as llmd
from podlatency.bundle import ModelBundle
from podlatency.errors import NotFound, Unsupported
from podlatency.prediction_service import MODEL_TYPE, PredictionService, reported_quantile
from podlatency.registry import ModelRegistry
from podlatency.schema import TARGETS
from podlatency.web.errors import JSON
from podlatency.web.openapi import error_responses
from podlatency.web.routes_llmd import objective_of

LLMD_MODEL_NAMES = ("ttft", "tpot", "ttft_scaler", "tpot_scaler", "ttft_gated", "tpot_gated")
"""Every model file llm-d's training server lists; podlatency has only the two boosters."""

VersionParameter = Annotated[
    str, Parameter(pattern=r"^[0-9a-f]{16}$", description="A model version: 16 hex digits (a content hash).")
]
ModelNameParameter = Annotated[
    str, Parameter(pattern=r"^[a-z_]{1,32}$", description="A model name: ttft or tpot (llm-d lists more).")
]


def _file_info(registry: ModelRegistry, name: str) -> dict[str, Any]:
    if name not in TARGETS:
        raise NotFound(f"unknown model {name!r}; models are {', '.join(TARGETS)}", field="name")
    return _stored_file(registry, name)


def _stored_file(registry: ModelRegistry, name: str) -> dict[str, Any]:
    """A model file of the active version, as llm-d describes it; ``exists`` false for other names."""
    version = registry.active_version()
    path = registry.booster_file(version, name) if version and name in TARGETS else None
    if path is None or not path.exists():
        return {"model_name": name, "exists": False, "size_bytes": 0, "last_modified": None, "version": None}
    stat = path.stat()
    return {
        "model_name": name,
        "exists": True,
        "size_bytes": stat.st_size,
        "last_modified": datetime.fromtimestamp(stat.st_mtime, tz=UTC).isoformat(),
        "version": version,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "format": "xgboost-ubj",
    }


@get("/v1/models", sync_to_thread=True)
def list_versions(service: NamedDependency[PredictionService]) -> dict[str, Any]:
    """Every stored version's metadata and archive SHA-256, oldest first, and which one is active."""
    registry = service.registry
    return {
        "active": registry.active_version(),
        "versions": [
            registry.metadata(version) | {"archive_sha256": registry.archive_sha256(version)}
            for version in registry.versions()
        ],
    }


@get("/v1/models/{version:str}/bundle", sync_to_thread=True, responses=error_responses(400, 404))
def bundle_archive(service: NamedDependency[PredictionService], version: VersionParameter) -> Response[bytes]:
    """A stored version's bundle archive: what predictors download and verify during a rollout."""
    registry = service.registry
    if version not in registry.versions():
        raise NotFound(f"no stored model version {version!r}", field="version")
    archive = registry.archive(version)
    return Response(
        archive,
        media_type="application/x-tar",
        headers={
            "Content-Disposition": f'attachment; filename="podlatency-{version}.tar"',
            "X-Model-Version": version,
            "X-Archive-SHA256": hashlib.sha256(archive).hexdigest(),
        },
    )


@get("/models/list", sync_to_thread=True)
def llmd_list(service: NamedDependency[PredictionService]) -> dict[str, Any]:
    """llm-d ``/models/list``: every name llm-d lists; the scalers and gated ensembles never exist here."""
    models = {}
    for name in LLMD_MODEL_NAMES:
        info = _stored_file(service.registry, name)
        models[name] = {key: info[key] for key in ("exists", "size_bytes", "last_modified")}
    model = service.holder.current_or_none()
    return {
        "models": models,
        "model_type": MODEL_TYPE,
        "quantile": reported_quantile(model.bundle if model else None, service.settings.quantile_alpha),
        "server_time": datetime.now(UTC).isoformat(),
    }


@get("/model/download/info", sync_to_thread=False)
def llmd_download_info(service: NamedDependency[PredictionService]) -> llmd.ModelDownloadInfo:
    """llm-d ``/model/download/info``: the model kind and where its trees are (the router polls it)."""
    model = service.holder.current_or_none()
    bundle = model.bundle if model else None
    return llmd.ModelDownloadInfo(
        model_type=MODEL_TYPE,
        objective_type=objective_of(service, bundle),
        quantile=reported_quantile(bundle, service.settings.quantile_alpha),
        model_status={f"{target}_model_ready": bundle is not None for target in TARGETS},
        available_endpoints={"trees": {f"{target}_trees": f"/model/{target}/xgb/json" for target in TARGETS}},
        model_version=bundle.version if bundle else None,
    )


def tree_dump(bundle: ModelBundle, target: str) -> bytes:
    """A booster's trees as one JSON array, in XGBoost's own dump format, features by name.

    Not cached: a dump of 200 trees takes tens of milliseconds, and routers ask once a minute.
    """
    named = bundle.boosters[target].copy()
    named.feature_names = list(bundle.feature_names)
    return b"[" + b",".join(tree.encode() for tree in named.get_dump(dump_format="json")) + b"]"


def _trees(service: PredictionService, target: str) -> Response[bytes]:
    model = service.holder.current()
    return Response(
        tree_dump(model.bundle, target), media_type=JSON, headers={"X-Model-Version": model.version}
    )


@get("/model/ttft/xgb/json", sync_to_thread=True, responses=error_responses(503))
def ttft_trees(service: NamedDependency[PredictionService]) -> Response[bytes]:
    """llm-d ``/model/ttft/xgb/json``: the TTFT booster's trees (the router fetches them every 60 s)."""
    return _trees(service, "ttft")


@get("/model/tpot/xgb/json", sync_to_thread=True, responses=error_responses(503))
def tpot_trees(service: NamedDependency[PredictionService]) -> Response[bytes]:
    """llm-d ``/model/tpot/xgb/json``: the TPOT booster's trees."""
    return _trees(service, "tpot")


@get("/model/export", sync_to_thread=False, responses=error_responses(501))
def llmd_export(service: NamedDependency[PredictionService]) -> None:
    """llm-d ``/model/export`` ships pickled files; podlatency never pickles, so it answers 501."""
    version = service.registry.active_version() or "{version}"
    raise Unsupported(
        "podlatency never pickles models, so it has no joblib export; download a version's bundle "
        f"archive (XGBoost UBJSON and JSON metadata) from /v1/models/{version}/bundle instead",
        field="/v1/models/{version}/bundle",
    )


@get("/model/{name:str}/info", sync_to_thread=True, responses=error_responses(400, 404))
def llmd_info(service: NamedDependency[PredictionService], name: ModelNameParameter) -> dict[str, Any]:
    """llm-d ``/model/{name}/info`` (plus our version and sha256)."""
    return _file_info(service.registry, name)


@get("/model/{name:str}/download", sync_to_thread=True, responses=error_responses(400, 404))
def llmd_download(service: NamedDependency[PredictionService], name: ModelNameParameter) -> Response[bytes]:
    """llm-d ``/model/{name}/download``: the active version's booster file."""
    registry = service.registry
    info = _file_info(registry, name)
    if not info["exists"]:
        raise NotFound(f"no stored {name} model yet", field="name")
    content = registry.booster_file(info["version"], name).read_bytes()
    return Response(
        content,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{name}.ubj"',
            "X-Model-Version": info["version"],
        },
    )
