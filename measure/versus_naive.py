"""``make bench``, head to head: podlatency against the naive server, and each predict engine raw.

Three servers over the same model folder, measured in one run: the naive server
(:mod:`measure.naive_app`), podlatency with XGBoost (the previous engine) and podlatency with
compiled trees (the default). For each: the 1-client p50 of a 7-pod ``/v1/predict`` and the
throughput of 16 keep-alive clients, in interleaved rounds (the best round kept). In this process:
both targets' raw predict on the request's matrix, with XGBoost and with the compiled libraries, in a
tight loop, with the CPU caches cold, and with server-like work between calls (as between a
server's requests), so the model compute inside the server can be set against them.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from measure.clients import LatencySummary, sequential, sequential_answers
from measure.cpu_state import CpuState
from measure.servers import LocalServer, loaded_point
from podlatency.engines.compiling import Compiler
from podlatency.engines.predictor import Predictor
from podlatency.registry import ModelRegistry

CONTENDERS = ("naive", "podlatency xgboost", "podlatency compiled")


def naive_server(model_dir: Path) -> LocalServer:
    """The naive server on uvicorn, with the same access-log and log-level settings as ours."""

    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "measure.naive_app:app", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip

    server = LocalServer({"NAIVE_MODEL_DIR": str(model_dir)}, command=command).start()
    server.wait_until("/readyz", 200)
    return server


def raw_predict(
    model_dir: Path, matrix: np.ndarray, body: bytes, repeats: int = 3000
) -> dict[str, dict[str, Any]]:
    """Both targets' predict on ``matrix`` in this process: XGBoost ``inplace_predict``, and compiled.

    In the conditions of :mod:`measure.cpu_state`: a tight loop (the best case), cold caches, and
    (compiled only) server-like, with the request ``body`` decoded between calls.
    """
    registry = ModelRegistry(model_dir)
    bundle = registry.load_active()
    assert bundle is not None  # noqa: S101  (trained just before)
    predictor = Predictor(bundle, "cpu", nthread=1)
    compiled, _ = Compiler(model_dir / "compiled").load_or_compile(
        bundle.boosters, bundle.version, registry.bundle_dir(bundle.version)
    )

    def on_xgboost() -> None:
        for target in predictor.targets:
            predictor.predict_target(target, matrix)

    def on_compiled() -> None:
        compiled.predict_timed(matrix)

    state = CpuState(body)
    return {
        "xgboost": state.timed(on_xgboost, "tight", repeats),
        "compiled": state.timed(on_compiled, "tight", repeats),
        "xgboost_cold_caches": state.timed(on_xgboost, "cold_caches", repeats),
        "compiled_cold_caches": state.timed(on_compiled, "cold_caches", repeats),
        "compiled_server_like": state.timed(on_compiled, "server_like", repeats),
    }


def head_to_head(
    servers: dict[str, LocalServer], body: bytes, requests: int, *, clients: int, seconds: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """Each contender: 1-client latency (and our model compute), then ``clients`` clients, best round."""
    results: dict[str, dict[str, Any]] = {}
    for name in CONTENDERS:
        port = servers[name].port
        if name == "naive":
            latencies = [seconds for seconds, _ in sequential_answers(port, body, requests)]
            results[name] = {"one_client": asdict(LatencySummary.of(latencies))}
        else:
            one_client, compute = sequential(port, body, requests)
            results[name] = {"one_client": asdict(one_client), "served_model_compute": asdict(compute)}
    for _ in range(rounds):
        for name in CONTENDERS:
            point = loaded_point(servers[name], body, clients, seconds)
            best = results[name].get("concurrent")
            if best is None or point["rps"] > best["rps"]:
                results[name]["concurrent"] = point | {"clients": clients}
    return results


def versus_naive_targets(head: dict[str, dict[str, Any]], raw: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """The compiled server against the naive one and against raw compiled predict (issue 15's targets)."""
    ours, naive = head["podlatency compiled"], head["naive"]
    return {
        "1_client_p50<=0.6x_naive": ours["one_client"]["p50_ms"] <= 0.6 * naive["one_client"]["p50_ms"],
        "16_clients_rps>=3x_naive": ours["concurrent"]["rps"] >= 3 * naive["concurrent"]["rps"],
        "served_compute<=1.2x_raw_compiled_server_like": (
            ours["served_model_compute"]["p50_ms"] <= 1.2 * raw["compiled_server_like"]["p50_ms"]
        ),
    }


def summary_lines(head: dict[str, dict[str, Any]], raw: dict[str, dict[str, Any]]) -> list[str]:
    """The head-to-head as printed lines, with ratios against the naive server."""
    naive = head["naive"]
    lines = []
    for name in CONTENDERS:
        figures = head[name]
        one, many = figures["one_client"], figures["concurrent"]
        compute = figures.get("served_model_compute")
        lines.append(
            f"{name:20s} 1 client p50 {one['p50_ms']:.3f} ms "
            f"({one['p50_ms'] / naive['one_client']['p50_ms']:.2f}x naive); "
            f"{many['clients']} clients {many['rps']:.0f} req/s "
            f"({many['rps'] / naive['concurrent']['rps']:.2f}x naive), p99 {many['p99_ms']:.2f} ms"
            + (f"; model compute p50 {compute['p50_ms']:.3f} ms" if compute else "")
        )
    lines.append(
        f"raw predict, both targets, same matrix: XGBoost p50 {raw['xgboost']['p50_ms']:.4f} ms, "
        f"compiled p50 {raw['compiled']['p50_ms']:.4f} ms; with cold caches: XGBoost "
        f"{raw['xgboost_cold_caches']['p50_ms']:.4f} ms, "
        f"compiled {raw['compiled_cold_caches']['p50_ms']:.4f} ms; compiled, server-like: "
        f"{raw['compiled_server_like']['p50_ms']:.4f} ms"
    )
    return lines
