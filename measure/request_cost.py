"""Where a prediction request's time goes: each piece measured by taking it away, in one run.

    python -m measure.request_cost [--requests 3000] [--seconds 3] [--rounds 3] [--out DIR]

Real servers on loopback, a 7-pod ``/v1/predict`` each, in interleaved rounds (each figure its best):
one client on one keep-alive connection (:class:`~measure.clients.RawConnection`: p50 and server CPU
per request) and 16 clients on one event loop (:func:`~measure.clients.raw_concurrent`: server CPU per
request).

- ``floor``: a Litestar async handler that decodes the body and answers a constant
  (:mod:`measure.floor_app`), and ``floor, plain ASGI``: the same as a plain ASGI handler in Litestar,
  as podlatency serves its batched routes. The difference is Litestar's HTTP handler machinery.
- ``podlatency``: the embedded default, compiled trees, batching, nothing exported.
- ``podlatency, no metrics``: the same with every Prometheus observation a no-op
  (:mod:`measure.without_metrics`): what the metrics cost.
- ``podlatency, 20-tree model``: the same code serving a model of 20 trees of depth 4 instead of 200 of
  depth 6 (compiled, both): what the model costs beyond its own compute, once the rest of a request
  has pushed its code out of the CPU's caches.

And podlatency's own phases at one client (means from its phase histograms in ``/metrics``).
"""

from __future__ import annotations

import json
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from measure.servers import LocalServer, bench_server, default_model_folder
from measure.versus_floor import floor_server, loaded, one_client, round_arguments, route_bodies
from podlatency.learning.training import TrainingOptions

PATH = "/v1/predict"
TINY_MODEL = TrainingOptions(rounds=20, max_depth=4)
WITHOUT_METRICS = str(Path(__file__).resolve().parent / "without_metrics")


def stop_all(servers: dict[str, LocalServer]) -> None:
    """Stop every server."""
    for server in servers.values():
        server.stop()


def phase_means_us(server: LocalServer, before: dict[str, float]) -> dict[str, float]:
    """Each phase's mean in µs over the requests since ``before`` (:func:`phase_sums`)."""
    after = phase_sums(server)
    means = {}
    for phase in after:
        if phase.endswith("_count"):
            continue
        count = after[f"{phase}_count"] - before.get(f"{phase}_count", 0.0)
        if count:
            means[phase] = round((after[phase] - before.get(phase, 0.0)) / count * 1e6, 1)
    return means


def phase_sums(server: LocalServer) -> dict[str, float]:
    """``/v1/predict``'s phase histograms' sums (by phase) and counts (``<phase>_count``) now."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:  # noqa: S310  (loopback)
        text = response.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("podlatency_phase_duration_seconds_") or f'route="{PATH}"' not in line:
            continue
        name, value = line.rsplit(" ", 1)
        phase = name.split('phase="', 1)[1].split('"', 1)[0]
        if name.startswith("podlatency_phase_duration_seconds_sum"):
            sums[phase] = float(value)
        elif name.startswith("podlatency_phase_duration_seconds_count"):
            sums[f"{phase}_count"] = float(value)
    return sums


def request_cost(*, requests: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Start every server, measure them in interleaved rounds, stop them; the figures and the pieces."""
    body = route_bodies()[PATH]
    best: dict[str, dict[str, float]] = {}
    phases: dict[str, float] = {}
    with ExitStack() as stack:
        model = stack.enter_context(default_model_folder())
        tiny = stack.enter_context(default_model_folder(options=TINY_MODEL))
        servers: dict[str, LocalServer] = {}
        stack.callback(stop_all, servers)
        servers["floor"] = floor_server("app")
        servers["floor, plain ASGI"] = floor_server("plain_asgi_app")
        servers["podlatency"] = bench_server(model, nthread=1, with_seed_designs=False)
        servers["podlatency, no metrics"] = bench_server(
            model, nthread=1, with_seed_designs=False, env={"PYTHONPATH": WITHOUT_METRICS}
        )
        servers["podlatency, 20-tree model"] = bench_server(tiny, nthread=1, with_seed_designs=False)
        for _ in range(rounds):
            for name, server in servers.items():
                before = phase_sums(server) if name == "podlatency" else {}
                single = one_client(server, PATH, body, requests)
                if name == "podlatency" and (name not in best or single["p50_ms"] < best[name]["p50_ms"]):
                    phases = phase_means_us(server, before)
                many = loaded(server, PATH, body, 16, seconds)["server_cpu_us_per_request"]
                figures = {**single, "16_clients_cpu_us_per_request": many}
                kept = best.setdefault(name, figures)
                for figure, value in figures.items():
                    kept[figure] = min(kept[figure], value)
    return {"servers": best, "pieces": pieces(best), "phases_at_one_client_us": phases}


def pieces(best: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """What each piece costs per request: the difference its removal makes."""

    def difference(whole: str, without: str) -> dict[str, float]:
        return {
            "one_client_p50_us": round((best[whole]["p50_ms"] - best[without]["p50_ms"]) * 1000, 1),
            "one_client_cpu_us": round(
                best[whole]["server_cpu_us_per_request"] - best[without]["server_cpu_us_per_request"], 1
            ),
            "16_clients_cpu_us": round(
                best[whole]["16_clients_cpu_us_per_request"] - best[without]["16_clients_cpu_us_per_request"],
                1,
            ),
        }

    return {
        "Litestar's HTTP handler machinery (floor over floor, plain ASGI)": difference(
            "floor", "floor, plain ASGI"
        ),
        "Prometheus metrics": difference("podlatency", "podlatency, no metrics"),
        "the 200-tree model over a 20-tree one": difference("podlatency", "podlatency, 20-tree model"),
        "podlatency over the floor": difference("podlatency", "floor"),
    }


def lines(results: dict[str, Any]) -> list[str]:
    """The figures as printed lines."""
    out = []
    for name, figures in results["servers"].items():
        out.append(
            f"{name:27s} 1 client p50 {figures['p50_ms'] * 1000:4.0f} µs, "
            f"{figures['server_cpu_us_per_request']:4.0f} µs CPU/request; "
            f"16 clients {figures['16_clients_cpu_us_per_request']:4.0f} µs CPU/request"
        )
    for piece, cost in results["pieces"].items():
        out.append(
            f"{piece}: 1 client p50 {cost['one_client_p50_us']:+.0f} µs, "
            f"CPU {cost['one_client_cpu_us']:+.0f} µs; 16 clients CPU {cost['16_clients_cpu_us']:+.0f} µs"
        )
    phases = ", ".join(f"{phase} {mean:.0f}" for phase, mean in results["phases_at_one_client_us"].items())
    out.append(f"podlatency's phases at one client, mean µs: {phases}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure and print; write ``request-cost.json`` into ``--out`` when given."""
    description = __doc__.split("\n")[0]
    parser = round_arguments(
        "python -m measure.request_cost", description, seconds=3.0, out_file="request-cost.json"
    )
    args = parser.parse_args(argv)
    results = request_cost(requests=args.requests, seconds=args.seconds, rounds=args.rounds)
    print("\n".join(lines(results)))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "request-cost.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
