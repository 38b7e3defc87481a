"""Several quantiles in one call, side by side with one: a 7-pod ``/v1/predict`` on quantile models.

    python -m measure.quantile_bench [--requests 2000] [--rounds 3] [--out bench-results]

Part of ``make bench``. Two quantile models trained as the embedded default is (20,000 synthetic rows),
each served by ``podlatency serve`` (compiled trees, one thread, nothing traced) and by the naive
server (:mod:`measure.naive_app`, which answers every quantile a model serves):

- ``single p90``: one quantile, 0.9: a quantile deployment with ``PODLATENCY_QUANTILES=0.9``, what
  every quantile deployment served before sets;
- ``set``: the default set, 0.5, 0.9, 0.95 and 0.99 (primary 0.9), asked for all four in the body's
  ``quantiles``, and asked for none (the same body as the others).

One keep-alive client sends ``--requests`` requests to each in turn, in ``--rounds`` interleaved
rounds; each keeps its best round's p50 and its best round's model compute (the server's
``predict_ttft`` + ``predict_tpot`` phases, p50). The targets: with all four quantiles, model compute
at most 1.5x the single quantile's, and p50 at most 0.6x the naive server's giving the same answer
(all four); without ``quantiles``, the set no slower than the single quantile (p50 and compute within
10%, the noise between rounds here). The single quantile's p50 is also given against the naive
server on its model, the ratio ``make bench`` holds the embedded default to.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from measure.clients import LatencySummary, model_compute, sequential_answers
from measure.servers import LocalServer, bench_server, default_model_folder
from measure.versus_naive import naive_server
from podlatency.learning.training import TrainingOptions
from podlatency.learning.workload import pod_rows

SET = (0.5, 0.9, 0.95, 0.99)
CONTENDERS = (
    "naive, single p90",
    "naive, set",
    "single p90",
    "set, no quantiles",
    "set, all four quantiles",
)


def bodies(pods: int) -> tuple[bytes, bytes]:
    """The 7-pod body without ``quantiles``, and the same asking for the whole set."""
    rows = pod_rows(pods, seed=7)
    return json.dumps({"pods": rows}).encode(), json.dumps({"pods": rows, "quantiles": list(SET)}).encode()


def measure(
    servers: dict[str, LocalServer], plain: bytes, asking: bytes, requests: int, rounds: int
) -> dict[str, Any]:
    """Each contender's best p50 and best model compute over the interleaved rounds."""
    routes = {
        "naive, single p90": ("naive single", plain),
        "naive, set": ("naive set", plain),
        "single p90": ("single", plain),
        "set, no quantiles": ("set", plain),
        "set, all four quantiles": ("set", asking),
    }
    best: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for name in CONTENDERS:
            server, body = routes[name]
            timed = sequential_answers(servers[server].port, body, requests)
            check_answer(name, timed[-1][1])
            figures = {"one_client": asdict(LatencySummary.of([seconds for seconds, _ in timed]))}
            if not name.startswith("naive"):
                figures["served_model_compute"] = asdict(model_compute(timed))
            kept = best.setdefault(name, figures)
            for key, summary in figures.items():
                if summary["p50_ms"] < kept[key]["p50_ms"]:
                    kept[key] = summary
    return best


def check_answer(name: str, answer: dict[str, Any]) -> None:
    """Each contender answers what it is measured for: the four quantiles, or the primary alone."""
    asked = name in {"naive, set", "set, all four quantiles"}
    for prediction in answer["predictions"]:
        held = sorted(prediction.get("quantiles", {}), key=float)
        if held != ([repr(quantile) for quantile in SET] if asked else []):
            raise RuntimeError(f"{name}: answered quantiles {held}")


def ratios(best: dict[str, Any]) -> dict[str, float]:
    """The ratios the targets read."""

    def p50(name: str, key: str = "one_client") -> float:
        return float(best[name][key]["p50_ms"])

    compute = "served_model_compute"
    return {
        "all_four_compute_over_single": round(
            p50("set, all four quantiles", compute) / p50("single p90", compute), 3
        ),
        "all_four_p50_over_naive": round(p50("set, all four quantiles") / p50("naive, set"), 3),
        "single_p50_over_naive": round(p50("single p90") / p50("naive, single p90"), 3),
        "no_quantiles_p50_over_single": round(p50("set, no quantiles") / p50("single p90"), 3),
        "no_quantiles_compute_over_single": round(
            p50("set, no quantiles", compute) / p50("single p90", compute), 3
        ),
    }


def targets(figures: dict[str, float]) -> dict[str, bool]:
    """The issue's targets for a set, from :func:`ratios`."""
    return {
        "quantiles_all_four_compute<=1.5x_single": figures["all_four_compute_over_single"] <= 1.5,
        "quantiles_all_four_p50<=0.6x_naive": figures["all_four_p50_over_naive"] <= 0.6,
        "quantiles_none_asked_p50<=1.1x_single": figures["no_quantiles_p50_over_single"] <= 1.1,
        "quantiles_none_asked_compute<=1.1x_single": figures["no_quantiles_compute_over_single"] <= 1.1,
    }


def quantile_bench(requests: int, rounds: int, pods: int = 7) -> dict[str, Any]:
    """Train both models, serve them, measure; the figures, ratios and targets."""
    plain, asking = bodies(pods)
    single = TrainingOptions(objective="quantile", quantile_alpha=0.9)
    every = TrainingOptions(objective="quantile", quantile_alpha=0.9, quantiles=SET)
    with contextlib.ExitStack() as stack:
        single_folder = stack.enter_context(default_model_folder("podlatency-p90-", single))
        set_folder = stack.enter_context(default_model_folder("podlatency-set-", every))
        servers: dict[str, LocalServer] = {}
        try:
            servers["naive single"] = naive_server(single_folder)
            servers["naive set"] = naive_server(set_folder)
            servers["single"] = bench_server(single_folder, nthread=1, with_seed_designs=False)
            servers["set"] = bench_server(set_folder, nthread=1, with_seed_designs=False)
            best = measure(servers, plain, asking, requests, rounds)
        finally:
            for server in servers.values():
                server.stop()
    figures = ratios(best)
    return {"pods_per_request": pods, "requests": requests, "rounds": rounds, "contenders": best,
            "ratios": figures, "targets": targets(figures)}  # fmt: skip


def summary_lines(results: dict[str, Any]) -> list[str]:
    """One line per contender, then the ratios."""
    lines = []
    for name, figures in results["contenders"].items():
        compute = figures.get("served_model_compute")
        lines.append(
            f"  {name:24s} 1 client p50 {figures['one_client']['p50_ms']:.3f} ms"
            + (f", model compute p50 {compute['p50_ms'] * 1000:.1f} µs" if compute else "")
        )
    lines += [f"  {name}: {value}" for name, value in results["ratios"].items()]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run it, print the summary, write ``quantiles.json`` into ``--out``; 0 when every target is met."""
    parser = argparse.ArgumentParser(
        prog="python -m measure.quantile_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; each contender's best is kept"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for quantiles.json")
    args = parser.parse_args(argv)
    results = quantile_bench(args.requests, args.rounds)
    print("\n".join(summary_lines(results)))
    for name, met in results["targets"].items():
        print(f"target {name}: {'met' if met else 'MISSED'}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantiles.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(results["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
