"""Real server processes on loopback for benchmarks, load tests and integration tests.

One way to start a server: :class:`LocalServer` runs ``podlatency serve`` (or any command that takes
a port) on a free loopback port, with the process set to die with its parent, waits until it answers,
reads its CPU time and memory from ``/proc``, and stops it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Self

from measure import seed_designs
from measure.clients import concurrent
from podlatency.learning.training import TrainingOptions, embedded_default
from podlatency.processes import die_with_parent
from podlatency.registry import ModelRegistry
from podlatency.settings import Settings


class ServerFailed(RuntimeError):
    """A server exited, or did not answer as expected in time."""


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far (Linux ``/proc``)."""
    # Fields 14 and 15 of /proc/PID/stat, counted after the parenthesised command name.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU time used by ``pid`` and its children that are still running (a server's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ServerFailed(f"no VmRSS for pid {pid}")


def serve_command(port: int) -> list[str]:
    """``podlatency serve`` on ``port``, with this interpreter."""
    return [sys.executable, "-m", "podlatency", "serve", "--port", str(port)]


class LocalServer:
    """A server process on a free loopback port (``podlatency serve`` unless ``command`` says otherwise).

    ``env`` is added to this process's environment; output goes to ``log_path`` (else nowhere).
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        command: Callable[[int], list[str]] = serve_command,
        log_path: Path | None = None,
    ) -> None:
        self.env = dict(env or {})
        self.port = port or free_port()
        self.command = command
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL on loopback."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self.process is None:
            raise ServerFailed("the server was never started")
        return self.process.pid

    def start(self) -> Self:
        """Start the process (it dies with this one); it may not answer yet."""
        output: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            output = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(  # noqa: S603  (our own commands, fixed arguments)
                self.command(self.port),
                env=os.environ | self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509  (started before any client thread)
            )
        finally:
            if not isinstance(output, int):
                output.close()
        return self

    def log(self) -> str:
        """What the server wrote so far (empty without a log file)."""
        return self.log_path.read_text() if self.log_path is not None and self.log_path.exists() else ""

    def answers(self, path: str) -> int | None:
        """The status ``GET path`` answers now, or ``None`` when nothing answers."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            return response.status
        except OSError:
            return None
        finally:
            connection.close()

    def wait_until(self, path: str = "/readyz", status: int = 200, timeout: float = 60.0) -> None:
        """Wait until ``GET path`` answers ``status``; :class:`ServerFailed` if the process exits first."""
        deadline = time.monotonic() + timeout
        last: int | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerFailed(f"server exited with status {self.process.returncode}\n{self.log()}")
            last = self.answers(path)
            if last == status:
                return
            time.sleep(0.05)
        raise ServerFailed(f"{path} never answered {status} (last: {last})\n{self.log()}")

    def wait_for_engine(self, engine: str = "compiled", timeout: float = 300.0) -> None:
        """Wait until ``/v1/model`` names ``engine``: a model is compiled in the background after start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request("GET", "/v1/model")
                response = connection.getresponse()
                body = response.read()
                if response.status == 200 and json.loads(body).get("engine") == engine:
                    return
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.2)
        raise ServerFailed(f"the server never predicted with {engine}\n{self.log()}")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        """Resident set size of the server process."""
        return rss_mb(self.pid)

    def stop(self) -> None:
        """Terminate and reap (kill after 15 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def default_model_folder(
    prefix: str = "podlatency-bench-", options: TrainingOptions | None = None
) -> Iterator[Path]:
    """A temporary model folder whose active model is the embedded default (removed afterwards).

    ``options`` train it otherwise (a quantile model, say), on the same synthetic rows.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        bundle = embedded_default(Settings().default_samples, options or TrainingOptions())
        ModelRegistry(Path(folder)).save(bundle)
        yield Path(folder)


def bench_server(
    model_dir: Path,
    nthread: int,
    *,
    with_seed_designs: bool = True,
    batching: bool = True,
    engine: str = "auto",
    tracing: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> LocalServer:
    """A ready ``podlatency serve`` on the model folder, on the CPU, on its engine.

    It traces nothing unless ``tracing`` sets the ``OTEL_*`` variables; ``env`` adds variables.
    """
    server = LocalServer(
        {
            "PODLATENCY_MODEL_DIR": str(model_dir),
            "PODLATENCY_DEVICE": "cpu",
            "PODLATENCY_ENGINE": engine,
            "PODLATENCY_NTHREAD": str(nthread),
            "PODLATENCY_LOG_LEVEL": "warning",
            "PODLATENCY_BATCHING": "true" if batching else "false",
            # The sweep measures how each design copes with up to 128 clients, so nothing is shed
            # (shedding is measured on its own: python -m measure.loadtest.overload).
            "PODLATENCY_MAX_IN_FLIGHT": "0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
        }
        | (seed_designs.serving_env() if with_seed_designs else {})
        | (tracing or {})
        | (env or {})
    ).start()
    server.wait_until("/readyz", 200)
    server.wait_for_engine("compiled" if engine == "auto" else "xgboost")
    return server


def loaded_point(
    server: LocalServer, body: bytes, clients: int, seconds: float, path: str = "/v1/predict"
) -> dict[str, Any]:
    """``clients`` keep-alive clients for ``seconds``: req/s, p50, p99, count and server CPU per request."""
    cpu_before = server.cpu_seconds()
    figures = concurrent(server.port, body, clients, seconds, path)
    cpu_used = server.cpu_seconds() - cpu_before
    point: dict[str, Any] = {key: figures[key] for key in ("rps", "p50_ms", "p99_ms", "count")}
    point["server_cpu_us_per_request"] = round(cpu_used / figures["count"] * 1e6, 1)
    return point
