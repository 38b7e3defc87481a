"""Stored model versions: ``/v1/models`` and the llm-d training server's model routes.

llm-d's prediction servers poll ``/model/{name}/info`` and download ``/model/{name}/download``; here
``name`` is a target (``ttft`` or ``tpot``) and the file is the active version's XGBoost UBJSON
booster, not llm-d's joblib file, so only podlatency predictors can load it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.params import FromPath

from podlatency.errors import NotFound
from podlatency.registry import ModelRegistry
from podlatency.schema import TARGETS
from podlatency.web.routes_v1 import service_of


def _registry(state: State) -> ModelRegistry:
    return service_of(state).registry


def _file_info(registry: ModelRegistry, name: str) -> dict[str, Any]:
    if name not in TARGETS:
        raise NotFound(f"unknown model {name!r}; models are {', '.join(TARGETS)}", field="name")
    version = registry.active_version()
    path = registry.booster_file(version, name) if version else None
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
def list_versions(state: State) -> dict[str, Any]:
    """Every stored version's metadata and archive SHA-256, oldest first, and which one is active."""
    registry = _registry(state)
    return {
        "active": registry.active_version(),
        "versions": [
            registry.metadata(version) | {"archive_sha256": registry.archive_sha256(version)}
            for version in registry.versions()
        ],
    }


@get("/v1/models/{version:str}/bundle", sync_to_thread=True)
def bundle_archive(state: State, version: FromPath[str]) -> Response[bytes]:
    """A stored version's bundle archive: what predictors download and verify during a rollout."""
    registry = _registry(state)
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
def llmd_list(state: State) -> dict[str, Any]:
    """llm-d ``/models/list``: each model file of the active version."""
    registry = _registry(state)
    models = {}
    for name in TARGETS:
        info = _file_info(registry, name)
        models[name] = {key: info[key] for key in ("exists", "size_bytes", "last_modified")}
    return {"models": models, "model_type": "xgboost", "server_time": datetime.now(UTC).isoformat()}


@get("/model/{name:str}/info", sync_to_thread=True)
def llmd_info(state: State, name: FromPath[str]) -> dict[str, Any]:
    """llm-d ``/model/{name}/info`` (plus our version and sha256)."""
    return _file_info(_registry(state), name)


@get("/model/{name:str}/download", sync_to_thread=True)
def llmd_download(state: State, name: FromPath[str]) -> Response[bytes]:
    """llm-d ``/model/{name}/download``: the active version's booster file."""
    registry = _registry(state)
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
