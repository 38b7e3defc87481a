"""podlatency in the llm-d router chart's sidecars, swapped in by image alone: real processes.

The containers are started as ``tests/fixtures/llmd_router_sidecars.json`` records the chart rendering
them (command, args, env), with four changes a test needs: ports shifted to free loopback ones (the
trainer's 8000 by ``PODLATENCY_PORT``, which the image's command reads), ``/models`` and
``/server_models`` in a temporary folder, one uvicorn worker instead of 28 on these two cores, and a
2-second model sync instead of 30. ``llm_d_latency_predictor`` is found where the image puts it
(``service/compat/`` on ``PYTHONPATH``). What no test here runs: the images themselves, and the Go
client (its calls are played as in ``test_llmd_router_contract.py``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from measure.servers import LocalServer, free_port
from podlatency.learning.workload import generate, router_observations
from tests.integration.conftest import Answer, http_request
from tests.integration.test_llmd_router_contract import (
    MODEL_INFO,
    SLOWDOWN,
    STATUS,
    assert_go_shape,
    post_observations,
    predict,
    router_row,
)

SIDECARS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "llmd_router_sidecars.json").read_text()
)
COMPAT = Path(__file__).parents[2] / "service" / "compat"
MODEL_SYNC_S = 2.0
RETRAIN_INTERVAL_S = float(SIDECARS["training-server"]["env"]["LATENCY_RETRAINING_INTERVAL_SEC"])
RETRAIN_S = 10.0
"""Ample for one retrain on 3,000 requests here (about a second)."""


class Sidecar(LocalServer):
    """A sidecar process, and requests to it as the contract test's helpers make them."""

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        return http_request(self.url, method, path, body)

    def serving(self) -> str | None:
        """The version in service (``None`` while not ready)."""
        answer = http_request(self.url, "GET", "/readyz")
        return str(answer.json()["model_version"]) if answer.status == 200 else None

    def wait_serving(self, version: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.serving() != version:
            assert time.monotonic() < deadline, f"never served {version}: {self.log()[-3000:]}"
            time.sleep(0.1)


def shifted(env: dict[str, str], folder: Path, ports: dict[int, int]) -> dict[str, str]:
    """The recorded env with its model paths under ``folder`` and its ports (in URLs too) shifted."""
    result = {}
    for name, value in env.items():
        moved = str(folder) + value if value.startswith(("/models/", "/server_models/")) else value
        for recorded, free in ports.items():
            if name.endswith("_URL"):
                moved = moved.replace(f":{recorded}", f":{free}")
            elif name == "PREDICT_PORT" and moved == str(recorded):
                moved = str(free)
        result[name] = moved
    return result


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[dict[str, Sidecar]]:
    """The training sidecar and one prediction sidecar, started as the chart says, until the test ends."""
    trainer_port, predictor_port = free_port(), free_port()
    ports = {8000: trainer_port, 8001: predictor_port}
    training, prediction = SIDECARS["training-server"], SIDECARS["prediction-server-1"]
    trainer = Sidecar(
        shifted(training["env"], tmp_path, ports)
        | {"PODLATENCY_HOST": "127.0.0.1", "PODLATENCY_PORT": str(trainer_port), "PODLATENCY_DEVICE": "cpu"},
        port=trainer_port,
        command=lambda _: [sys.executable, "-m", "podlatency", "serve"],  # the image's command
        log_path=tmp_path / "trainer.log",
    )
    host, port = "0.0.0.0", str(8001)  # noqa: S104  (what the chart says; moved to loopback below)
    args = [{host: "127.0.0.1", port: str(predictor_port)}.get(arg, arg) for arg in prediction["args"]]
    predictor = Sidecar(
        shifted(prediction["env"], tmp_path, ports)
        | {
            "UVICORN_WORKERS": "1",
            "MODEL_SYNC_INTERVAL_SEC": str(MODEL_SYNC_S),
            "PODLATENCY_DEVICE": "cpu",
            "PYTHONPATH": str(COMPAT),
        },
        port=predictor_port,
        command=lambda _: [sys.executable, "-m", *prediction["command"], *args],
        log_path=tmp_path / "predictor.log",
    )
    servers = {"trainer": trainer.start(), "predictor": predictor.start()}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_the_router_charts_sidecars_serve_podlatency(sidecars: dict[str, Sidecar], tmp_path: Path) -> None:
    """Trainer and predictor come up as the chart starts them, each in its role and folder.

    The router's calls are answered as Go reads them; router rows posted to the trainer are learned by
    its own retrain (the chart's 10 s interval), and the predictor serves the result within its sync.
    """
    trainer, predictor = sidecars["trainer"], sidecars["predictor"]
    trainer.wait_until("/readyz", 200, timeout=120)
    first = trainer.serving()
    assert first is not None
    predictor.wait_serving(first, timeout=60)
    assert (tmp_path / "server_models" / "ACTIVE").read_text().strip() == first
    assert (tmp_path / "models" / "ACTIVE").read_text().strip() == first
    for server in (trainer, predictor):
        assert_go_shape(server.request("GET", "/status").json(), STATUS)
        assert_go_shape(server.request("GET", "/model/download/info").json(), MODEL_INFO)
    assert trainer.request("GET", "/").json()["roles"] == ["trainer"]
    assert predictor.request("GET", "/").json()["roles"] == ["predictor"]

    post_observations(trainer, router_observations(3_000, seed=40, slowdown=SLOWDOWN))
    # Within the chart's retrain interval (its drift check retrains sooner), a retrain, and one sync.
    deadline = time.monotonic() + RETRAIN_INTERVAL_S + RETRAIN_S + MODEL_SYNC_S
    while (published := trainer.serving()) in (first, None) or predictor.serving() != published:
        assert time.monotonic() < deadline, f"{published}: {trainer.log()[-2000:]} {predictor.log()[-2000:]}"
        time.sleep(0.1)
    rows = [router_row(row) for row in generate(7, seed=3, slowdown=SLOWDOWN).rows()]
    assert {prediction["model_version"] for prediction in predict(predictor, rows)} == {published}
