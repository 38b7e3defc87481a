"""Load shedding under overload, measured with Locust: accepted requests keep their latency.

    python -m measure.loadtest.overload                # about 2 minutes; writes loadtest-results/overload/
    python -m measure.loadtest.overload --out docs/overload    # the report the docs quote

One server process with the embedded default model. First the capacity: ``--capacity-users``
closed-loop Locust users (no wait) against ``/v1/predict`` with no in-flight limit. Then
``--overload-users`` users (several times that concurrency) twice: without a limit
(``PODLATENCY_MAX_IN_FLIGHT=0``: every request queues) and with the default limit (the rest are
answered 503 ``overloaded`` at once). Answers and shed requests are counted apart
(``ShedAwareUser``). Everything runs on this machine in one run, so the figures compare; Locust
shares the cores with the server.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from measure.loadtest.compare import (
    ComparedServer,
    EndpointResult,
    read_locust_stats,
    read_response_times,
    run_endpoint,
)
from measure.loadtest.endpoints import Endpoint
from podlatency.settings import Settings

ACCEPTED, SHED = "/v1/predict [accepted]", "/v1/predict [shed]"


@dataclass
class Run:
    """One Locust run: its answers and its shed requests."""

    label: str
    users: int
    limit: int
    accepted: EndpointResult
    shed: EndpointResult

    @property
    def failures(self) -> int:
        """Requests that were neither valid answers nor load-shedding 503s."""
        return self.accepted.failures + self.shed.failures


def run(label: str, users: int, limit: int, args: argparse.Namespace, workdir: Path) -> Run:
    """One Locust run against a fresh server with ``limit`` requests in flight (0 = none)."""
    folder = workdir / label
    folder.mkdir()
    limit_env = {"PODLATENCY_MAX_IN_FLIGHT": str(limit)}
    server = ComparedServer(1, Settings().threads, folder / "server.log", limit_env)
    try:
        options = argparse.Namespace(
            users=users, warmup=args.warmup, duration=args.seconds, processes=1, pods=args.pods
        )
        design = f"{users} users, in-flight limit {limit or 'none'}"
        endpoint = Endpoint(label, ACCEPTED, "ShedAwareUser", design)
        accepted = run_endpoint(endpoint, options, server.url, server=server, workdir=folder, label=label)
        shed = EndpointResult(label, SHED, design)
        read_locust_stats(folder / label, SHED, shed)
        read_response_times(folder / f"{label}-times", shed)
    finally:
        server.stop()
    return Run(label, users, limit, accepted, shed)


def report(runs: list[Run], args: argparse.Namespace) -> str:
    """The runs as a Markdown table."""
    lines = [
        "# Load shedding under overload",
        "",
        f"`python -m measure.loadtest.overload --seconds {args.seconds:g}` ({args.pods}-pod requests, "
        "one server process, Locust on the same machine; closed-loop users with no wait).",
        "",
        "| run | users | in-flight limit | answered req/s | answered p50 ms | answered p99 ms "
        "| shed req/s | shed p50 ms | shed p99 ms | failures |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in runs:
        accepted, shed = item.accepted, item.shed
        lines.append(
            f"| {item.label} | {item.users} | {item.limit or 'none'} | {accepted.rps} | {accepted.p50_ms} "
            f"| {accepted.p99_ms} | {shed.rps} | {shed.p50_ms} | {shed.p99_ms} | {item.failures} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run capacity, overload without a limit, overload with the default limit; write the report."""
    parser = argparse.ArgumentParser(prog="python -m measure.loadtest.overload", description=__doc__)
    parser.add_argument("--capacity-users", type=int, default=32)
    parser.add_argument("--overload-users", type=int, default=256)
    parser.add_argument("--limit", type=int, default=Settings().max_in_flight)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=4.0, help="ramp-up seconds before measuring")
    parser.add_argument("--pods", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("loadtest-results/overload"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="podlatency-overload-") as scratch:
        workdir = Path(scratch)
        runs = [
            run("capacity", args.capacity_users, 0, args, workdir),
            run("overload-unbounded", args.overload_users, 0, args, workdir),
            run("overload-shedding", args.overload_users, args.limit, args, workdir),
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps([asdict(item) for item in runs], indent=2) + "\n")
    text = report(runs, args)
    (args.out / "report.md").write_text(text)
    print(text)
    return 1 if any(item.failures for item in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
