"""Real ``podlatency serve`` processes on loopback, and a real OTLP/HTTP receiver."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from measure.otlp_receiver import OtlpReceiver
from measure.servers import LocalServer, ServerFailed
from podlatency.registry import ModelRegistry
from tests.integration.kube_emulator import KubeEmulator


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    base_url: str,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request to a server on loopback (a dict body is sent as JSON); any status is answered."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(base_url + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())


class ServerProcess(LocalServer):
    """One real ``podlatency serve`` on a free loopback port, on the CPU, over a test's model folder."""

    def __init__(self, model_dir: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        super().__init__(
            {"PODLATENCY_MODEL_DIR": str(model_dir), "PODLATENCY_DEVICE": "cpu"} | (env or {}), port=port
        )
        self.model_dir = model_dir

    def launch(self, log_dir: Path) -> ServerProcess:
        """Start it, logging into ``log_dir``, and wait until it answers (a model may still be loading)."""
        self.log_path = log_dir / f"server-{self.port}.log"
        self.start()
        self.wait_for("/healthz", 200)
        return self

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        return http_request(self.url, method, path, body, headers)

    def wait_for(self, path: str, status: int, timeout: float = 60.0) -> Answer:
        """Wait until ``GET path`` answers ``status``, and return that answer (the test fails otherwise)."""
        try:
            self.wait_until(path, status, timeout)
        except ServerFailed as error:
            pytest.fail(str(error))
        return self.request("GET", path)


def corrupt_copy(model_dir: Path, folder: Path) -> Path:
    """A copy of ``model_dir`` in ``folder`` whose active model's TTFT booster is truncated."""
    shutil.copytree(model_dir, folder)
    registry = ModelRegistry(folder)
    active = registry.active_version()
    assert active is not None
    (registry.bundle_dir(active) / "ttft.ubj").write_bytes(b"truncated")
    return folder


@pytest.fixture(scope="session", autouse=True)
def shared_compiled_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One compiled-model cache for every server of the session (``PODLATENCY_COMPILED_DIR``).

    The embedded default is the same version in every model folder, so it is compiled once, by the
    first server that lives long enough, and the others load it as a restarted pod would.
    """
    folder = tmp_path_factory.mktemp("compiled")
    previous = os.environ.get("PODLATENCY_COMPILED_DIR")
    os.environ["PODLATENCY_COMPILED_DIR"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["PODLATENCY_COMPILED_DIR"]
    else:
        os.environ["PODLATENCY_COMPILED_DIR"] = previous


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Start servers for one test; all are stopped afterwards."""
    started: list[ServerProcess] = []

    def start(model_dir: Path, *, port: int | None = None, **env: str) -> ServerProcess:
        server = ServerProcess(model_dir, env=env, port=port).launch(tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeEmulator]:
    """A Kubernetes API emulator on loopback, with a kubeconfig for it (kube_emulator.py)."""
    with KubeEmulator(tmp_path) as emulator:
        yield emulator
