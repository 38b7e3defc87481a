"""``make bench``: serving latency, model compute and memory of real servers, in one run.

    python -m measure.bench [--soak-seconds 120] [--out bench-results]

What it measures, all on this machine in one run so the figures compare:

1. podlatency (compiled trees, the default; and XGBoost, the previous engine) against the naive server
   a user would write after the seed post (:mod:`measure.versus_naive`): 1-client p50 of a 7-pod
   ``/v1/predict``, and throughput at 16 keep-alive clients, as ratios to the naive server's;
2. the server's own model compute (its ``predict_ttft`` + ``predict_tpot`` phases) against raw predict
   of the same matrix in this process, compiled and with XGBoost;
3. resident memory of the serving process with and without the seed designs, and of a bare process that
   only imports Litestar, uvicorn and XGBoost, for scale;
4. a concurrency sweep (1, 8, 32, 128 clients): ``/v1/predict`` with and without the micro-batcher, the
   seed post's batch design and its original ``to-thread`` design, interleaved at each
   level, best of two rounds per point;
5. a soak at 32 clients (2 minutes by default): resident memory at its start and end;
6. quantile models: a 7-pod ``/v1/predict`` asking for all four quantiles of the default set, against
   one quantile and the naive server (:mod:`measure.quantile_bench`);
7. against the floor (:mod:`measure.versus_floor`): ``/v1/predict`` and ``/predict/bulk/strict`` set
   against a Litestar async handler that only decodes the body, at 1 and 16 clients.

podlatency runs with the embedded default model, on the CPU, with no trace exporter, and with the
seed designs served beside it (:mod:`measure.seed_designs`; they load pandas) except for one memory
reading without them.
Its servers wait until the compiled engine serves (the compile is cached in the model folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from measure.clients import concurrent, sequential
from measure.ingestion import TRAINER_ENV, best_ingestion
from measure.quantile_bench import quantile_bench
from measure.quantile_bench import summary_lines as quantile_lines
from measure.servers import LocalServer, bench_server, default_model_folder, loaded_point
from measure.tracing_cost import tracing_cost, tracing_lines
from measure.versus_floor import floor_lines, floor_targets, measure_versus_floor
from measure.versus_naive import (
    head_to_head,
    naive_server,
    raw_predict,
    summary_lines,
    versus_naive_targets,
)
from podlatency.learning.workload import pod_rows
from podlatency.registry import ModelRegistry
from podlatency.schema import PodMetrics, feature_matrix


def trainer_server(model_dir: Path, env: dict[str, str] | None = None) -> LocalServer:
    """A ready trainer (and predictor) on its own model folder: XGBoost, never retraining."""
    return bench_server(
        model_dir, nthread=1, engine="xgboost", with_seed_designs=False, env=TRAINER_ENV | (env or {})
    )


def trainer_ingestion(requests: int, rounds: int) -> dict[str, Any]:
    """A trainer over a model folder of its own takes bulk requests back to back: its best round."""
    with default_model_folder() as folder:
        trainer = trainer_server(folder)
        try:
            return best_ingestion({"trainer": trainer}, requests=requests, rounds=rounds)["trainer"]
        finally:
            trainer.stop()


def bare_process_rss_mb() -> float:
    """RSS of a process that imports only Litestar, uvicorn and XGBoost (for scale)."""
    code = (
        "import litestar, uvicorn, xgboost, numpy, pathlib;"
        "status = pathlib.Path('/proc/self/status').read_text().splitlines();"
        "print([line for line in status if line.startswith('VmRSS')][0])"
    )
    command = [sys.executable, "-c", code]
    output = subprocess.run(command, capture_output=True, text=True, check=True)  # noqa: S603
    return round(int(output.stdout.split()[1]) / 1024, 1)


SWEEP_ENDPOINTS = (
    ("v1 batching", "batching", "/v1/predict"),
    ("v1 no batching", "no-batching", "/v1/predict"),
    ("seed batch", "batching", "/seed/batch"),
    ("seed to-thread", "batching", "/seed/to-thread"),
)


def sweep(
    servers: dict[str, LocalServer], body: bytes, levels: list[int], seconds: float, rounds: int = 2
) -> dict[str, dict[str, Any]]:
    """Every sweep endpoint at every concurrency level: req/s, p50, p99, and server CPU per request.

    The endpoints are measured one after the other at each level, in ``rounds`` interleaved rounds, and
    each point keeps its best round (by throughput): on a shared machine noise comes in bursts of
    seconds, so the figures that are compared are measured seconds apart, and a burst that hits one
    round of one endpoint does not decide the comparison.
    """
    results: dict[str, dict[str, Any]] = {name: {} for name, _, _ in SWEEP_ENDPOINTS}
    for clients in levels:
        for _ in range(rounds):
            for name, server, path in SWEEP_ENDPOINTS:
                point = loaded_point(servers[server], body, clients, seconds, path)
                best = results[name].get(str(clients))
                if best is None or point["rps"] > best["rps"]:
                    results[name][str(clients)] = point
        for name, _, _ in SWEEP_ENDPOINTS:
            point = results[name][str(clients)]
            print(
                f"  {name:15s} {clients:4d} clients: {point['rps']:8.1f} req/s  "
                f"p50 {point['p50_ms']:8.2f} ms  p99 {point['p99_ms']:8.2f} ms  "
                f"server CPU {point['server_cpu_us_per_request']:7.0f} us/request",
                flush=True,
            )
    return results


def soak(server: LocalServer, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` for ``seconds``: resident memory at the start and the end, and the throughput."""
    concurrent(server.port, body, clients, min(2.0, seconds))
    rss_start = server.rss_mb()
    figures = concurrent(server.port, body, clients, seconds)
    return {"clients": clients, "seconds": seconds, "rss_start_mb": rss_start, "rss_end_mb": server.rss_mb(),
            "rps": figures["rps"], "p99_ms": figures["p99_ms"]}  # fmt: skip


def sweep_and_soak(
    model_dir: Path,
    body: bytes,
    levels: list[int],
    sweep_seconds: float,
    soak_seconds: float,
    *,
    sweep_rounds: int = 2,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """The concurrency sweep on a batching and a non-batching server, then the soak on the first."""
    batching_server = bench_server(model_dir, nthread=1)
    plain_server = bench_server(model_dir, nthread=1, batching=False)
    try:
        servers = {"batching": batching_server, "no-batching": plain_server}
        sweep_results = sweep(servers, body, levels, sweep_seconds, sweep_rounds)
    finally:
        plain_server.stop()
    try:
        soak_results = soak(batching_server, body, 32, soak_seconds) if soak_seconds > 0 else {}
    finally:
        batching_server.stop()
    return sweep_results, soak_results


def run_benchmark(
    requests: int,
    pods: int,
    concurrent_seconds: float,
    out: Path,
    *,
    levels: list[int],
    sweep_seconds: float,
    soak_seconds: float,
    sweep_rounds: int = 2,
) -> int:
    """Run every measurement, print a summary, write ``results.json``; 0 when all targets are met."""
    rows_json = pod_rows(pods, seed=7)
    body = json.dumps({"pods": rows_json}).encode()
    matrix = feature_matrix([msgspec.convert(row, PodMetrics) for row in rows_json])
    with default_model_folder() as model_dir:
        version = ModelRegistry(model_dir).active_version()
        print(f"model {version}: {pods}-pod requests, {requests} sequential, 16 concurrent", flush=True)
        raw = raw_predict(model_dir, matrix, body)  # compiles the model once; the servers load that compile
        servers = {
            "naive": naive_server(model_dir),
            "podlatency xgboost": bench_server(model_dir, nthread=1, engine="xgboost"),
            "podlatency compiled": bench_server(model_dir, nthread=1),
        }
        try:
            head = head_to_head(servers, body, requests, clients=16, seconds=concurrent_seconds, rounds=2)
            rss_after = servers["podlatency compiled"].rss_mb()
        finally:
            for server in servers.values():
                server.stop()

        print("against the floor: /v1/predict and /predict/bulk/strict, 1 and 16 clients", flush=True)
        floor = measure_versus_floor(model_dir, requests=requests, seconds=concurrent_seconds, rounds=2)

        server = bench_server(model_dir, nthread=1, with_seed_designs=False)
        try:
            sequential(server.port, body, 300)
            rss_without_seed_designs = server.rss_mb()
        finally:
            server.stop()

        print("tracing off, at the defaults, and on every request:", flush=True)
        tracing = tracing_cost(
            lambda env: bench_server(model_dir, nthread=1, with_seed_designs=False, tracing=env),
            body,
            clients=16,
            seconds=concurrent_seconds,
            rounds=2,
        )

        print("ingestion: 10,000-row bulk requests into a trainer", flush=True)
        ingestion = trainer_ingestion(requests=6, rounds=2)

        print("quantile models: all four quantiles in one call, against one", flush=True)
        quantiles = quantile_bench(requests=requests, rounds=3, pods=pods)

        print(f"concurrency sweep, best of {sweep_rounds} interleaved rounds of {sweep_seconds:g} s:")
        sweep_results, soak_results = sweep_and_soak(
            model_dir, body, levels, sweep_seconds, soak_seconds, sweep_rounds=sweep_rounds
        )
    bare_rss = bare_process_rss_mb()

    served_compute_ms = head["podlatency compiled"]["served_model_compute"]["p50_ms"]
    compute_ratio = served_compute_ms / raw["compiled"]["p50_ms"]
    targets = versus_naive_targets(head, raw) | {"server_rss_mb<=250": rss_after <= 250}
    targets["16_clients_tracing_defaults_rps>=0.9x_off"] = tracing["defaults"]["rps_over_off"] >= 0.9
    targets |= batching_targets(sweep_results)
    targets |= quantiles["targets"]
    targets |= floor_targets(floor)
    if soak_results:
        targets["soak_rss_growth_mb<=5"] = soak_results["rss_end_mb"] - soak_results["rss_start_mb"] <= 5
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "model_version": version,
        "pods_per_request": pods,
        "head_to_head": head,
        "versus_floor": floor,
        "raw_predict": raw,
        "served_compute_over_raw_compiled_p50": round(compute_ratio, 3),
        "served_compute_over_raw_compiled_cold_p50": round(
            served_compute_ms / raw["compiled_cold_caches"]["p50_ms"], 3
        ),
        "served_compute_over_raw_compiled_server_like_p50": round(
            served_compute_ms / raw["compiled_server_like"]["p50_ms"], 3
        ),
        "tracing": tracing,
        "ingestion": ingestion,
        "quantiles": quantiles,
        "server_rss_mb": rss_after,
        "server_rss_mb_without_seed_designs": rss_without_seed_designs,
        "bare_litestar_xgboost_rss_mb": bare_rss,
        "sweep_seconds_per_round": sweep_seconds,
        "sweep_rounds": sweep_rounds,
        "sweep": sweep_results,
        "soak_32_clients": soak_results,
        "targets": targets,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _print_summary(results)
    print(f"wrote {out / 'results.json'}")
    return 0 if all(targets.values()) else 1


def batching_targets(sweep_results: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """The throughput issue's targets, where the sweep measured the levels they name."""
    batched, plain, to_thread = (
        sweep_results[name] for name in ("v1 batching", "v1 no batching", "seed to-thread")
    )
    targets: dict[str, bool] = {}
    if "32" in batched:
        targets["32_clients_batching_rps>=2x_no_batching"] = batched["32"]["rps"] >= 2 * plain["32"]["rps"]
        targets["32_clients_batching_p99_ms<=20"] = batched["32"]["p99_ms"] <= 20
        targets["32_clients_rps>=50x_to_thread"] = batched["32"]["rps"] >= 50 * to_thread["32"]["rps"]
    return targets


def _print_summary(results: dict[str, Any]) -> None:
    lines = summary_lines(results["head_to_head"], results["raw_predict"])
    lines += ["against the floor (ratios: 1-client p50, CPU per request at 16 clients):"]
    lines += floor_lines(results["versus_floor"])
    lines += tracing_lines(results["tracing"])
    bulk = results["ingestion"]
    lines.append(
        f"ingestion: {bulk['rows_per_s']:.0f} rows/s, {bulk['rows_per_request']}-row request p50 "
        f"{bulk['p50_ms']:.1f} ms, {bulk['server_cpu_us_per_row']:.1f} µs CPU/row, "
        f"{bulk['unscored_rows']} rows not scored"
    )
    lines += ["quantile models (7-pod /v1/predict, best of 3 interleaved rounds):"]
    lines += quantile_lines(results["quantiles"])
    lines += [
        f"served / raw compiled model compute: {results['served_compute_over_raw_compiled_p50']} "
        f"(cold caches: {results['served_compute_over_raw_compiled_cold_p50']}; server-like: "
        f"{results['served_compute_over_raw_compiled_server_like_p50']})",
        f"server RSS: {results['server_rss_mb']} MB, {results['server_rss_mb_without_seed_designs']} MB "
        "without the seed designs",
        f"bare Litestar + XGBoost process RSS: {results['bare_litestar_xgboost_rss_mb']} MB",
    ]
    soak_figures = results["soak_32_clients"]
    if soak_figures:
        lines.append(
            f"soak, 32 clients for {soak_figures['seconds']:g} s: RSS {soak_figures['rss_start_mb']} MB -> "
            f"{soak_figures['rss_end_mb']} MB, {soak_figures['rps']} req/s, "
            f"p99 {soak_figures['p99_ms']:.2f} ms"
        )
    lines += [f"target {name}: {'met' if met else 'MISSED'}" for name, met in results["targets"].items()]
    print("\n".join(lines))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m measure.bench",
        description="Serving latency, model compute and memory of a real server.",
    )
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per measurement")
    parser.add_argument("--pods", type=int, default=7, help="pods per request")
    parser.add_argument(
        "--concurrent-seconds",
        type=float,
        default=5.0,
        help="length of each 16-client round against the naive server",
    )
    parser.add_argument("--levels", default="1,8,32,128", help="client counts of the concurrency sweep")
    parser.add_argument("--sweep-seconds", type=float, default=3.0, help="length of each sweep point")
    parser.add_argument(
        "--sweep-rounds", type=int, default=2, help="interleaved rounds per sweep point; the best is kept"
    )
    parser.add_argument("--soak-seconds", type=float, default=120.0, help="32-client memory soak; 0 skips it")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for results.json")
    args = parser.parse_args(argv)
    return run_benchmark(
        requests=args.requests,
        pods=args.pods,
        concurrent_seconds=args.concurrent_seconds,
        out=args.out,
        levels=[int(level) for level in args.levels.split(",")],
        sweep_seconds=args.sweep_seconds,
        sweep_rounds=args.sweep_rounds,
        soak_seconds=args.soak_seconds,
    )


if __name__ == "__main__":
    raise SystemExit(main())
