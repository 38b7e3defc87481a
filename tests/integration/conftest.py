"""Real ``podlatency serve`` processes on loopback, and a real OTLP/HTTP receiver."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from benchmarks.servers import LocalServer, ServerFailed
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


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

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | None = None) -> Answer:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, dict(error.headers), error.read())

    def wait_for(self, path: str, status: int, timeout: float = 60.0) -> Answer:
        """Wait until ``GET path`` answers ``status``, and return that answer (the test fails otherwise)."""
        try:
            self.wait_until(path, status, timeout)
        except ServerFailed as error:
            pytest.fail(str(error))
        return self.request("GET", path)


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


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver: decodes ExportTraceServiceRequest protobufs into spans."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.service_names: set[str] = set()
        self.content_types: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(payload)
                with receiver._lock:
                    receiver.content_types.add(self.headers.get("content-type", ""))
                    for resource_spans in request.resource_spans:
                        for attribute in resource_spans.resource.attributes:
                            if attribute.key == "service.name":
                                receiver.service_names.add(attribute.value.string_value)
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans.extend(scope_spans.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()
