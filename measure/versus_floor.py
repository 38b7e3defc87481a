"""``make bench``, against the floor: what a prediction costs beyond the HTTP request that carries it.

    python -m measure.versus_floor [--requests 3000] [--seconds 4] [--rounds 3] [--out DIR]

Two servers in one run: the floor (:mod:`measure.floor_app`: a Litestar async handler that decodes the
body and answers a constant, served by uvicorn as podlatency is) and podlatency with the embedded
default (compiled trees, batching, nothing exported). For each of the router's routes, ``/v1/predict``
and llm-d's ``/predict/bulk/strict``, with a 7-pod body: one client on one keep-alive connection
(:class:`~measure.clients.RawConnection`: p50 and server CPU per request), then 16 keep-alive
clients on one event loop (:func:`~measure.clients.raw_concurrent`: req/s, p99, server CPU per
request), in interleaved rounds, each figure its best round. Ratios are podlatency's over the
floor's; the targets are 2x for the 1-client p50 and for the CPU per request at 16 clients.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from measure.clients import raw_concurrent, raw_sequential
from measure.servers import LocalServer, bench_server, default_model_folder
from podlatency.learning.workload import pod_rows

ROUTES = ("/v1/predict", "/predict/bulk/strict")
TARGET_RATIO = 2.0


def route_bodies(pods: int = 7) -> dict[str, bytes]:
    """Each route's body for the same ``pods`` rows."""
    rows = pod_rows(pods, seed=7)
    return {
        "/v1/predict": json.dumps({"pods": rows}).encode(),
        "/predict/bulk/strict": json.dumps({"requests": rows}).encode(),
    }


def floor_server(app: str = "app") -> LocalServer:
    """``measure.floor_app``'s ``app`` on uvicorn, with the same access-log and log-level settings as ours."""

    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", f"measure.floor_app:{app}", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip

    server = LocalServer(command=command).start()
    server.wait_until("/readyz", 200)
    return server


def one_client(server: LocalServer, path: str, body: bytes, requests: int) -> dict[str, Any]:
    """One raw keep-alive client: p50, p99 and the server's CPU per request."""
    cpu_before = server.cpu_seconds()
    latency, _ = raw_sequential(server.port, path, body, requests)
    cpu_used = server.cpu_seconds() - cpu_before
    served = requests + min(200, requests)  # the warm-up's requests used CPU too
    return {
        "p50_ms": latency.p50_ms,
        "p99_ms": latency.p99_ms,
        "server_cpu_us_per_request": round(cpu_used / served * 1e6, 1),
    }


def loaded(server: LocalServer, path: str, body: bytes, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` raw keep-alive clients (:func:`~measure.clients.raw_concurrent`): req/s, p99, CPU."""
    cpu_before = server.cpu_seconds()
    figures = raw_concurrent(server.port, body, clients, seconds, path)
    cpu_used = server.cpu_seconds() - cpu_before
    return {
        "clients": clients,
        "rps": figures["rps"],
        "p99_ms": figures["p99_ms"],
        "server_cpu_us_per_request": round(cpu_used / figures["count"] * 1e6, 1),
    }


def versus_floor(
    servers: dict[str, LocalServer], *, requests: int, clients: int, seconds: float, rounds: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per route, each server's best figures over the rounds, at 1 client and at ``clients``; the ratios."""
    bodies = route_bodies()
    results: dict[str, dict[str, dict[str, Any]]] = {path: {name: {} for name in servers} for path in ROUTES}
    for _ in range(rounds):
        for path in ROUTES:
            for name, server in servers.items():
                best = results[path][name]
                _keep_best(best, "one_client", one_client(server, path, bodies[path], requests))
                _keep_best(best, "concurrent", loaded(server, path, bodies[path], clients, seconds))
    for figures in results.values():
        floor, ours = figures["floor"], figures["podlatency"]
        ours["over_floor"] = {
            "one_client_p50": round(ours["one_client"]["p50_ms"] / floor["one_client"]["p50_ms"], 2),
            "one_client_cpu_per_request": round(
                ours["one_client"]["server_cpu_us_per_request"]
                / floor["one_client"]["server_cpu_us_per_request"],
                2,
            ),
            "concurrent_rps": round(ours["concurrent"]["rps"] / floor["concurrent"]["rps"], 2),
            "concurrent_cpu_per_request": round(
                ours["concurrent"]["server_cpu_us_per_request"]
                / floor["concurrent"]["server_cpu_us_per_request"],
                2,
            ),
        }
    return results


def _keep_best(best: dict[str, dict[str, Any]], key: str, measured: dict[str, Any]) -> None:
    """Each figure's best round so far: the most req/s, the least of every other figure."""
    if key not in best:
        best[key] = measured
        return
    for figure, value in measured.items():
        keep = max if figure == "rps" else min
        best[key][figure] = keep(best[key][figure], value)


def floor_targets(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, bool]:
    """Issue 28's targets, per route: 1-client p50 and CPU per request at 16 clients within 2x the floor's."""
    targets: dict[str, bool] = {}
    for path, figures in results.items():
        ratios = figures["podlatency"]["over_floor"]
        targets[f"{path}_1_client_p50<=2x_floor"] = ratios["one_client_p50"] <= TARGET_RATIO
        targets[f"{path}_16_clients_cpu_per_request<=2x_floor"] = (
            ratios["concurrent_cpu_per_request"] <= TARGET_RATIO
        )
    return targets


def floor_lines(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The comparison as printed lines."""
    lines = []
    for path, figures in results.items():
        for name in ("floor", "podlatency"):
            one, many = figures[name]["one_client"], figures[name]["concurrent"]
            ratios = figures[name].get("over_floor")
            lines.append(
                f"{path} {name:10s} 1 client p50 {one['p50_ms'] * 1000:.0f} µs, "
                f"{one['server_cpu_us_per_request']:.0f} µs CPU/request; {many['clients']} clients "
                f"{many['rps']:.0f} req/s, {many['server_cpu_us_per_request']:.0f} µs CPU/request"
                + (
                    f" ({ratios['one_client_p50']:.2f}x, {ratios['concurrent_cpu_per_request']:.2f}x)"
                    if ratios
                    else ""
                )
            )
    return lines


def measure_versus_floor(
    model_dir: Path, *, requests: int, clients: int = 16, seconds: float, rounds: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Start the floor and podlatency over ``model_dir``, measure them, stop them."""
    servers = {"floor": floor_server()}
    try:
        servers["podlatency"] = bench_server(model_dir, nthread=1, with_seed_designs=False)
        return versus_floor(servers, requests=requests, clients=clients, seconds=seconds, rounds=rounds)
    finally:
        for server in servers.values():
            server.stop()


def round_arguments(prog: str, description: str, *, seconds: float, out_file: str) -> argparse.ArgumentParser:
    """The command line of a measurement in interleaved rounds at 1 and 16 clients."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests per 1-client round")
    parser.add_argument("--seconds", type=float, default=seconds, help="length of each 16-client round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each figure its best")
    parser.add_argument("--out", type=Path, default=None, help=f"folder for {out_file}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure against the floor on the embedded default; 0 when the targets are met."""
    description = __doc__.split("\n")[0]
    parser = round_arguments(
        "python -m measure.versus_floor", description, seconds=4.0, out_file="versus-floor.json"
    )
    args = parser.parse_args(argv)
    with default_model_folder() as model_dir:
        results = measure_versus_floor(
            model_dir, requests=args.requests, seconds=args.seconds, rounds=args.rounds
        )
    targets = floor_targets(results)
    print("\n".join(floor_lines(results)))
    print("\n".join(f"target {name}: {'met' if met else 'MISSED'}" for name, met in targets.items()))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        document = {"results": results, "targets": targets}
        (args.out / "versus-floor.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
