"""Measure the serving set-ups the defaults were chosen by: server, processes, nthread, batching.

    pip install granian            # optional: without it only uvicorn set-ups are measured
    python -m measure.loadtest.server_choice

Each set-up serves the embedded default model; one keep-alive client measures the 1-client p50, then
32 keep-alive clients on one event loop (:func:`~measure.clients.raw_concurrent`) run for a few
seconds (req/s, p50, p99, and the server's CPU per request, all its processes counted: requests per
CPU-second is what one core serves). All on this machine in one run, so the figures compare; the
clients share the machine's cores with the server. The floor (:mod:`measure.floor_app`) is what the
HTTP stack alone costs. What tracing costs is measured by ``make bench`` (:mod:`measure.tracing_cost`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from measure.clients import raw_concurrent, raw_sequential
from measure.servers import LocalServer, default_model_folder, process_tree_cpu_seconds
from podlatency.learning.workload import pod_rows


@dataclass(frozen=True)
class SetUp:
    """One way to serve: which server, how many processes, extra PODLATENCY_* settings."""

    server: str
    workers: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short description for the table."""
        extra = " ".join(
            f"{key.removeprefix('PODLATENCY_').lower()}={value}" for key, value in self.env.items()
        )
        if self.server == "floor":
            return "floor: Litestar async handler, decode only"
        return f"{self.server}, {self.workers} worker(s) {extra}".strip()

    def command(self, port: int) -> list[str]:
        """The process to start."""
        if self.server == "granian":
            return [
                str(Path(sys.executable).with_name("granian")), "--interface", "asgi", "--factory",
                "--host", "127.0.0.1", "--port", str(port), "--workers", str(self.workers),
                "--no-access-log", "--log-level", "warning", "podlatency.web.app:app_from_env",
            ]  # fmt: skip
        if self.server == "floor":
            return [
                sys.executable, "-m", "uvicorn", "measure.floor_app:app", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(self.workers), "--no-access-log",
                "--log-level", "warning",
            ]  # fmt: skip
        return [
            sys.executable,
            "-m",
            "podlatency",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(self.workers),
        ]


SET_UPS = (
    SetUp("uvicorn", 1),
    SetUp("uvicorn", 1, {"PODLATENCY_NTHREAD": "0"}),
    SetUp("uvicorn", 1, {"PODLATENCY_BATCHING": "false"}),
    SetUp("uvicorn", 2),
    SetUp("uvicorn", 2, {"PODLATENCY_BATCHING": "false"}),
    SetUp("granian", 1),
    SetUp("granian", 2),
    # What the HTTP stack alone costs: an async handler that only decodes the body.
    SetUp("floor", 1),
)


def measure(set_up: SetUp, model_dir: Path, body: bytes, seconds: float) -> dict[str, float]:
    """Start the set-up, measure it, stop it."""
    env = {
        "PODLATENCY_MODEL_DIR": str(model_dir),
        "PODLATENCY_DEVICE": "cpu",
        "PODLATENCY_LOG_LEVEL": "warning",
        "PODLATENCY_MAX_IN_FLIGHT": "0",  # set-ups are compared unshed (see measure.loadtest.overload)
        **set_up.env,
    }
    server = LocalServer(env, command=set_up.command).start()
    try:
        server.wait_until("/readyz", 200)
        if set_up.server != "floor":
            server.wait_for_engine("compiled")  # measured as it serves once it has compiled
        port = server.port
        single = raw_sequential(port, "/v1/predict", body, 1000)[0].p50_ms
        raw_concurrent(port, body, 32, 1.0)
        cpu_before = process_tree_cpu_seconds(server.pid)
        loaded = raw_concurrent(port, body, 32, seconds)
        cpu_used = process_tree_cpu_seconds(server.pid) - cpu_before
    finally:
        server.stop()
    cpu_us_per_request = cpu_used / loaded["count"] * 1e6
    return {"p50_ms_1_client": single, "rps_32": loaded["rps"], "p50_ms_32": loaded["p50_ms"],
            "p99_ms_32": loaded["p99_ms"], "server_cpu_us_per_request_32": round(cpu_us_per_request, 1),
            "requests_per_cpu_second_32": round(1e6 / cpu_us_per_request)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Measure every available set-up and print a table; write ``server-choice.json``."""
    parser = argparse.ArgumentParser(
        prog="python -m measure.loadtest.server_choice", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each 32-client run")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    has_granian = importlib.util.find_spec("granian") is not None and shutil.which(
        "granian", path=str(Path(sys.executable).parent)
    )
    if not has_granian:
        print("granian is not installed: measuring uvicorn set-ups only (pip install granian to compare)")
    body = json.dumps({"pods": pod_rows(7, seed=7)}).encode()
    results: dict[str, dict[str, float]] = {}
    with default_model_folder("podlatency-servers-") as folder:
        for set_up in SET_UPS:
            if set_up.server == "granian" and not has_granian:
                continue
            figures = measure(set_up, folder, body, args.seconds)
            results[set_up.label] = figures
            print(
                f"{set_up.label:40s} 1 client p50 {figures['p50_ms_1_client']:.3f} ms | 32 clients "
                f"{figures['rps_32']:7.1f} req/s p50 {figures['p50_ms_32']:.1f} ms "
                f"p99 {figures['p99_ms_32']:.1f} ms, "
                f"server CPU {figures['server_cpu_us_per_request_32']:.0f} us/req "
                f"({figures['requests_per_cpu_second_32']} req per CPU-second)",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "server-choice.json").write_text(
        json.dumps({"cpus": os.cpu_count(), "set_ups": results}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
