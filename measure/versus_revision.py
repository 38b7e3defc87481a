"""Serving speed of the working tree against another revision (its parent by default), side by side.

    python -m measure.versus_revision [--rev HEAD~1] [--rounds 3] [--seconds 4] [--out DIR]
    python -m measure.versus_revision --rev HEAD~1 --own-models    # a change that changes the model

A change that should not slow serving is measured against the revision before it in one run on one
machine: ``git archive`` extracts the revision's package into a temporary folder, and two servers
run over the same model folder (the embedded default, compiled trees, one worker, nothing traced):
the revision's (its ``service/`` first on ``PYTHONPATH``) and the working tree's. In interleaved
rounds, each answers a 7-pod ``/v1/predict`` to one keep-alive client (p50, and server CPU per
request) and to 16 clients (req/s, p99, server CPU per request); each figure keeps its best round.
Both must give the same predictions for the same body (within float32 tolerance: two engines may sum
the same leaves in another order). Then the same at 16 clients with tracing at
its defaults (an OTLP endpoint, the 1% head share, slow and failed requests kept), each exporting to
a receiver of its own, as the chart deploys them. With ``--own-models`` each server instead starts on
an empty folder and trains the embedded default its own code trains (for a change to training,
whose predictions are meant to differ). Then two trainers, one of each, over model
folders of their own take the router's observations (:mod:`measure.ingestion`: bulk requests of
10,000 rows back to back; rows per second, latency, CPU per row), in interleaved rounds too. Ratios
are the working tree's over the revision's; docs/performance.md reads them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from measure.bench import trainer_server
from measure.clients import LatencySummary, sequential_answers
from measure.ingestion import best_ingestion
from measure.otlp_receiver import OtlpReceiver
from measure.servers import LocalServer, bench_server, default_model_folder, loaded_point
from podlatency.learning.workload import pod_rows

REPOSITORY = Path(__file__).resolve().parents[1]


def extract_package(revision: str, into: Path) -> str:
    """The revision's ``service/`` folder under ``into``; its full commit hash."""
    # git with fixed arguments; the revision is the caller's own, checked by rev-parse.
    verify = ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"]
    found = subprocess.run(verify, cwd=REPOSITORY, capture_output=True, text=True, check=True)  # noqa: S603
    commit = found.stdout.strip()
    archive = into / "service.tar"
    with archive.open("wb") as out:
        command = ["git", "archive", commit, "service"]
        subprocess.run(command, cwd=REPOSITORY, stdout=out, check=True)  # noqa: S603
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return commit


PREDICTION_TOLERANCE = 1e-5
"""Relative: what two engines may differ by in float32 (summing the same leaves in another order)."""


def same_predictions(revision: list[tuple[float, float]], working_tree: list[tuple[float, float]]) -> bool:
    """Whether both answered the same latencies for every pod, within float32 tolerance."""
    return len(revision) == len(working_tree) and all(
        abs(ours - theirs) <= PREDICTION_TOLERANCE * max(abs(ours), abs(theirs), 1.0)
        for pod, other in zip(revision, working_tree, strict=True)
        for theirs, ours in zip(pod, other, strict=True)
    )


def one_client(server: LocalServer, body: bytes, requests: int) -> dict[str, Any]:
    """One keep-alive client: p50/p99 and server CPU per request; the last answer's predictions."""
    cpu_before = server.cpu_seconds()
    timed = sequential_answers(server.port, body, requests)
    cpu_used = server.cpu_seconds() - cpu_before
    summary = LatencySummary.of([seconds for seconds, _ in timed])
    predictions = [(pod["ttft_ms"], pod["tpot_ms"]) for pod in timed[-1][1]["predictions"]]
    return {
        "p50_ms": summary.p50_ms,
        "p99_ms": summary.p99_ms,
        "server_cpu_us_per_request": round(cpu_used / requests * 1e6, 1),
        "predictions": predictions,
    }


def measure(
    servers: dict[str, LocalServer], body: bytes, *, requests: int, clients: int, seconds: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """Each server's best round: 1 client (lowest p50) and ``clients`` clients (highest req/s)."""
    results: dict[str, dict[str, Any]] = {name: {} for name in servers}
    for _ in range(rounds):
        for name, server in servers.items():
            single = one_client(server, body, requests)
            best = results[name].get("one_client")
            if best is None or single["p50_ms"] < best["p50_ms"]:
                results[name]["one_client"] = single
            point = loaded_point(server, body, clients, seconds) | {"clients": clients}
            best = results[name].get("concurrent")
            if best is None or point["rps"] > best["rps"]:
                results[name]["concurrent"] = point
    return results


def measure_traced(
    models: dict[str, Path], revision_path: dict[str, str], body: bytes, *, seconds: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """16 clients against each revision with tracing at its defaults: best round by req/s."""
    receivers = {name: OtlpReceiver() for name in ("revision", "working tree")}
    best: dict[str, dict[str, Any]] = {}
    try:
        servers = {
            name: bench_server(
                models[name],
                nthread=1,
                with_seed_designs=False,
                tracing={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"},
                env=revision_path if name == "revision" else None,
            )
            for name, receiver in receivers.items()
        }
        try:
            for _ in range(rounds):
                for name, server in servers.items():
                    point = loaded_point(server, body, 16, seconds) | {"clients": 16}
                    if name not in best or point["rps"] > best[name]["rps"]:
                        best[name] = point
        finally:
            for server in servers.values():
                server.stop()
    finally:
        for receiver in receivers.values():
            receiver.close()
    return best


def measure_ingestion(
    revision_path: dict[str, str], *, requests: int, rounds: int, own_models: bool
) -> dict[str, dict[str, Any]]:
    """Two trainers (revision, working tree), each over its own model folder: best round by rows/s."""
    with model_folders(own=own_models, shared=False) as models:
        servers = {
            "revision": trainer_server(models["revision"], revision_path),
            "working tree": trainer_server(models["working tree"]),
        }
        try:
            return best_ingestion(servers, requests=requests, rounds=rounds)
        finally:
            for server in servers.values():
                server.stop()


@contextlib.contextmanager
def model_folders(*, own: bool, shared: bool = True) -> Iterator[dict[str, Path]]:
    """Per server its model folder.

    The embedded default (one ``shared`` folder, or one each), or (``own``) an empty one each, where
    each server trains the embedded default its own code trains.
    """
    if not own:
        with default_model_folder() as theirs, default_model_folder() as ours:
            yield {"revision": theirs, "working tree": theirs if shared else ours}
        return
    with tempfile.TemporaryDirectory(prefix="podlatency-revision-models-") as folder:
        folders = {name: Path(folder) / name.replace(" ", "-") for name in ("revision", "working tree")}
        for path in folders.values():
            path.mkdir()
        yield folders


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The working tree's figures over the revision's."""
    ours, theirs = results["working tree"], results["revision"]
    pairs = {
        "one_client_p50": ("one_client", "p50_ms"),
        "one_client_cpu_per_request": ("one_client", "server_cpu_us_per_request"),
        "concurrent_rps": ("concurrent", "rps"),
        "concurrent_p99": ("concurrent", "p99_ms"),
        "concurrent_cpu_per_request": ("concurrent", "server_cpu_us_per_request"),
        "traced_rps": ("traced", "rps"),
        "traced_cpu_per_request": ("traced", "server_cpu_us_per_request"),
        "ingestion_rows_per_s": ("ingestion", "rows_per_s"),
        "ingestion_p50": ("ingestion", "p50_ms"),
        "ingestion_cpu_per_row": ("ingestion", "server_cpu_us_per_row"),
    }
    return {name: round(ours[kind][key] / theirs[kind][key], 3) for name, (kind, key) in pairs.items()}


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write ``versus-revision.json``; exit 1 when the predictions differ."""
    parser = argparse.ArgumentParser(prog="python -m measure.versus_revision", description=__doc__)
    parser.add_argument("--rev", default="HEAD~1", help="the revision to compare with (default HEAD~1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per 16-client point")
    parser.add_argument("--requests", type=int, default=1500, help="1-client requests per round")
    parser.add_argument("--bulk-requests", type=int, default=6, help="10,000-row bulk requests per round")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--own-models", action="store_true", help="each serves the embedded default its own code trains"
    )
    args = parser.parse_args(argv)
    body = msgspec.json.encode({"pods": pod_rows(7, seed=11)})
    with tempfile.TemporaryDirectory(prefix="podlatency-revision-") as folder:
        try:
            commit = extract_package(args.rev, Path(folder))
        except subprocess.CalledProcessError:
            parser.error(f"--rev {args.rev}: not a revision of this repository")
        revision_path = {"PYTHONPATH": str(Path(folder) / "service")}
        with model_folders(own=args.own_models) as models:
            servers = {
                "revision": bench_server(
                    models["revision"], nthread=1, with_seed_designs=False, env=revision_path
                ),
                "working tree": bench_server(models["working tree"], nthread=1, with_seed_designs=False),
            }
            try:
                results = measure(
                    servers,
                    body,
                    requests=args.requests,
                    clients=16,
                    seconds=args.seconds,
                    rounds=args.rounds,
                )
            finally:
                for server in servers.values():
                    server.stop()
            traced = measure_traced(models, revision_path, body, seconds=args.seconds, rounds=args.rounds)
        ingestion = measure_ingestion(
            revision_path, requests=args.bulk_requests, rounds=args.rounds, own_models=args.own_models
        )
    for name, point in ingestion.items():
        results[name]["ingestion"] = point
        results[name]["traced"] = traced[name]
    same = same_predictions(
        results["revision"]["one_client"]["predictions"], results["working tree"]["one_client"]["predictions"]
    )
    report = {
        "revision": args.rev,
        "commit": commit,
        "own_models": args.own_models,
        "same_predictions": same,
    } | {
        "results": results,
        "working_tree_over_revision": ratios(results),
    }
    for name, figures in results.items():
        single, many = figures["one_client"], figures["concurrent"]
        print(
            f"{name:13s} 1 client p50 {single['p50_ms']:.3f} ms, "
            f"{single['server_cpu_us_per_request']:.0f} µs CPU/request; {many['clients']} clients "
            f"{many['rps']:.0f} req/s, p99 {many['p99_ms']:.2f} ms, "
            f"{many['server_cpu_us_per_request']:.0f} µs CPU/request"
        )
        print(
            f"{'':13s} tracing at its defaults: {figures['traced']['rps']:.0f} req/s, "
            f"{figures['traced']['server_cpu_us_per_request']:.0f} µs CPU/request"
        )
        bulk = figures["ingestion"]
        print(
            f"{'':13s} ingestion {bulk['rows_per_s']:.0f} rows/s, {bulk['rows_per_request']}-row request p50 "
            f"{bulk['p50_ms']:.1f} ms, {bulk['server_cpu_us_per_row']:.1f} µs CPU/row"
            + ("" if bulk["unscored_rows"] is None else f", {bulk['unscored_rows']} rows not scored")
        )
    print(f"working tree / {args.rev} ({commit[:10]}): {report['working_tree_over_revision']}")
    print(
        "same predictions"
        if same
        else "predictions differ (each its own model)"
        if args.own_models
        else "PREDICTIONS DIFFER"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "versus-revision.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'versus-revision.json'}")
    return 0 if same or args.own_models else 1


if __name__ == "__main__":
    sys.exit(main())
