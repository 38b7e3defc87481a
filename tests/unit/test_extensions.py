"""Extensions: routes from outside the package, plugged in by object or by ``PODLATENCY_EXTENSIONS``."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.testing import TestClient

from podlatency.errors import SettingsError
from podlatency.prediction_service import PredictionService
from podlatency.runtime import Runtime
from podlatency.settings import Settings
from podlatency.web.app import create_app
from podlatency.web.edge import EdgeMiddleware
from podlatency.web.extensions import Extension, extensions_from_settings, import_extension
from tests.unit.test_app import cpu_settings, wait_ready

PACKAGE = Path(__file__).resolve().parents[2] / "service" / "podlatency"

closed: list[str] = []


@get("/ext/greeting", sync_to_thread=False)
def greeting(service: NamedDependency[PredictionService], greeter: NamedDependency[str]) -> dict[str, Any]:
    """Answers with its own dependency and the runtime's model version."""
    return {"greeting": greeter, "model_version": service.holder.current().version}


def greeting_extension(runtime: Runtime) -> Extension:
    """An extension as ``PODLATENCY_EXTENSIONS`` would name it."""

    def greeter() -> str:
        return f"hello from {runtime.settings.role}"

    return Extension(
        routes=[greeting],
        dependencies={"greeter": Provide(greeter, sync_to_thread=False)},
        prediction_paths=("/ext/",),
        close=lambda: closed.append("greeting"),
    )


NOT_A_FUNCTION = 42


def not_an_extension(runtime: Runtime) -> str:
    """Returns the wrong thing."""
    return "no"


def test_an_extension_serves_its_routes_with_its_dependencies_and_is_closed(model_dir: Path) -> None:
    """Its route answers from its own dependency and the runtime's; it is closed when the app stops."""
    closed.clear()
    runtime = Runtime(cpu_settings(model_dir))
    with TestClient(create_app(runtime, extensions=[greeting_extension(runtime)])) as client:
        wait_ready(client)
        answer = client.get("/ext/greeting")
        assert answer.status_code == 200
        assert answer.json() == {
            "greeting": "hello from both",
            "model_version": runtime.service.holder.current().version,
        }
        assert closed == []
    assert closed == ["greeting"]


def test_extension_paths_count_as_predictions_and_are_shed(model_dir: Path) -> None:
    """At the in-flight limit, an extension's prediction path is shed with 503; other routes are not."""
    runtime = Runtime(cpu_settings(model_dir, max_in_flight=2))
    app = create_app(runtime, extensions=[greeting_extension(runtime)])
    edge = next(layer for layer in app.middleware if isinstance(layer, EdgeMiddleware))
    with TestClient(app) as client:
        wait_ready(client)
        edge.in_flight = 2  # two predictions in progress
        shed = client.get("/ext/greeting")
        assert shed.status_code == 503
        assert shed.json()["error"] == "overloaded"
        assert client.get("/v1/model").status_code == 200
        edge.in_flight = 0
        assert client.get("/ext/greeting").status_code == 200


def test_podlatency_extensions_imports_what_it_names(model_dir: Path) -> None:
    """``module:attribute`` paths are imported and called with the runtime."""
    settings = Settings.from_env(
        {"PODLATENCY_EXTENSIONS": " tests.unit.test_extensions:greeting_extension ,"},
        model_dir=model_dir,
        device="cpu",
    )
    extensions = extensions_from_settings(Runtime(settings))
    assert [extension.routes for extension in extensions] == [[greeting]]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tests.unit.test_extensions", "must be comma-separated module:attribute import paths"),
        ("tests.unit.test_extensions:greeting_extension;x", "must be comma-separated module:attribute"),
        ("no_such_module_here:extension", "cannot be imported: No module named 'no_such_module_here'"),
        ("tests.unit.test_extensions:missing", "cannot be imported"),
        ("tests.unit.test_extensions:NOT_A_FUNCTION", "which is not a function"),
        ("tests.unit.test_extensions:not_an_extension", "which returned str, not an Extension"),
    ],
)
def test_a_bad_extension_is_refused_naming_the_variable(model_dir: Path, value: str, message: str) -> None:
    """Each way of naming a bad extension is a SettingsError that names PODLATENCY_EXTENSIONS."""

    def serve() -> None:
        settings = Settings.from_env({"PODLATENCY_EXTENSIONS": value}, model_dir=model_dir, device="cpu")
        extensions_from_settings(Runtime(settings))

    with pytest.raises(SettingsError, match="PODLATENCY_EXTENSIONS") as refused:
        serve()
    assert message in str(refused.value)


def test_import_extension_returns_the_function() -> None:
    assert import_extension("tests.unit.test_extensions:greeting_extension") is greeting_extension


def test_the_served_package_imports_nothing_that_measures() -> None:
    """No module of ``podlatency`` imports ``measure`` (the benchmarks, load tests and seed designs)."""
    offenders = []
    for module in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{module.name}: {name}" for name in names if name.split(".")[0] == "measure"]
    assert offenders == []
