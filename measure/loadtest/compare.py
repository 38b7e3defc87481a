"""Drive every endpoint with the same Locust load, one after another, and write a comparison report.

    python -m measure.loadtest.compare                       # starts its own server, 32 users x 20 s each
    python -m measure.loadtest.compare --host http://127.0.0.1:8000 --users 64 --processes 2

For each endpoint it runs Locust headless with the same users, spawn rate and duration (stats are
reset once all users are spawned, so the ramp-up is the warm-up), scrapes the server's
``/metrics`` before and after for the server-side mean of each phase, and measures the CPU the load
generator and (when it started it) the server used. The output folder gets ``results.json``,
``report.md`` and ``report.png``. The exit status is 1 when an endpoint got no requests or its
failure ratio passes ``--max-failure-ratio``. Only loopback targets are allowed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from measure import seed_designs
from measure.loadtest.endpoints import ENDPOINTS, Endpoint
from measure.loadtest.report import write_report
from measure.servers import LocalServer, ServerFailed, default_model_folder

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class EndpointResult:
    """What one endpoint's run measured."""

    name: str
    path: str
    design: str
    requests: int = 0
    failures: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    generator_cpu_percent: float = 0.0
    server_cpu_percent: float | None = None
    server_phase_mean_ms: dict[str, float] = field(default_factory=dict)
    locust_exit_code: int = 0

    @property
    def failure_ratio(self) -> float:
        """Failures per request (1.0 when nothing was sent)."""
        return self.failures / self.requests if self.requests else 1.0


class ComparedServer:
    """``podlatency serve`` with the embedded default and the seed designs, for runs without ``--host``."""

    def __init__(self, nthread: int, threads: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        self._folder = contextlib.ExitStack()
        model_dir = self._folder.enter_context(default_model_folder("podlatency-loadtest-"))
        settings = {
            "PODLATENCY_MODEL_DIR": str(model_dir),
            "PODLATENCY_DEVICE": "cpu",
            "PODLATENCY_NTHREAD": str(nthread),
            "PODLATENCY_THREADS": str(threads),
            "PODLATENCY_LOG_LEVEL": "warning",
            # The designs are compared under the same queueing; shedding is measure.loadtest.overload's.
            "PODLATENCY_MAX_IN_FLIGHT": "0",
            **seed_designs.serving_env(),  # the seed designs are what it compares against
        }
        self._server = LocalServer(settings | (env or {}), log_path=log_path).start()
        try:
            self._server.wait_until("/readyz", 200)
            self._server.wait_for_engine("compiled")  # measured as it serves once it has compiled
        except ServerFailed as error:
            log_tail = self._server.log()[-2000:]
            self.stop()
            raise SystemExit(f"loadtest: {str(error).splitlines()[0]}\n{log_tail}") from None

    @property
    def url(self) -> str:
        """Base URL on loopback."""
        return self._server.url

    def cpu_seconds(self) -> float:
        """User + system CPU the server has used so far."""
        return self._server.cpu_seconds()

    def stop(self) -> None:
        """Terminate, reap and remove the model folder."""
        self._server.stop()
        self._folder.close()


def phase_sums(url: str) -> dict[tuple[str, str], tuple[float, float]]:
    """``(route, phase) -> (sum seconds, count)`` from the server's phase histogram."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:  # noqa: S310  (loopback)
        text = response.read().decode()
    sums: dict[tuple[str, str], list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "podlatency_phase_duration_seconds":
            continue
        for sample in family.samples:
            key = (sample.labels.get("route", ""), sample.labels.get("phase", ""))
            if sample.name.endswith("_sum"):
                sums.setdefault(key, [0.0, 0.0])[0] = sample.value
            elif sample.name.endswith("_count"):
                sums.setdefault(key, [0.0, 0.0])[1] = sample.value
    return {key: (values[0], values[1]) for key, values in sums.items()}


def phase_means(
    before: dict[tuple[str, str], tuple[float, float]],
    after: dict[tuple[str, str], tuple[float, float]],
    route: str,
) -> dict[str, float]:
    """Mean milliseconds per phase occurrence on ``route`` between two scrapes."""
    means: dict[str, float] = {}
    for (phase_route, phase), (total, count) in after.items():
        if phase_route != route:
            continue
        previous_total, previous_count = before.get((phase_route, phase), (0.0, 0.0))
        if count > previous_count:
            means[phase] = round((total - previous_total) / (count - previous_count) * 1000, 4)
    return means


def read_locust_stats(prefix: Path, path: str, result: EndpointResult) -> None:
    """Fill ``result`` from Locust's ``<prefix>_stats.csv`` row for ``path`` (percentiles: see below)."""
    with Path(f"{prefix}_stats.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == path:
                result.requests = int(row["Request Count"])
                result.failures = int(row["Failure Count"])
                result.rps = round(float(row["Requests/s"]), 2)
                result.p50_ms = _number(row["50%"])
                result.p95_ms = _number(row["95%"])
                result.p99_ms = _number(row["99%"])
                result.max_ms = _number(row["Max Response Time"])


def read_response_times(folder: Path, result: EndpointResult) -> None:
    """Percentiles and max from the exact response times the Locust processes wrote (locustfile.py).

    One set of numbers, so a p99 never exceeds the max; to the microsecond, so sub-10-ms endpoints
    are not rounded to whole milliseconds. Without the files, Locust's own (rounded) figures stay.
    """
    values = [
        value
        for file in sorted(folder.glob("*.json"))
        for value in json.loads(file.read_text()).get(result.path, [])
    ]
    if not values:
        return
    ordered = np.sort(np.asarray(values))
    for attribute, quantile in (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        setattr(result, attribute, round(float(np.quantile(ordered, quantile, method="higher")), 3))
    result.max_ms = round(float(ordered[-1]), 3)


def _number(text: str) -> float:
    try:
        return round(float(text), 3)
    except ValueError:  # Locust writes "N/A" when there were no requests
        return 0.0


def run_endpoint(
    endpoint: Endpoint,
    args: argparse.Namespace,
    url: str,
    *,
    server: ComparedServer | None,
    workdir: Path,
    label: str,
) -> EndpointResult:
    """One headless Locust run against one endpoint, with a progress line."""
    result = EndpointResult(endpoint.name, endpoint.path, endpoint.design)
    prefix = workdir / endpoint.name
    spawn_rate = max(1.0, args.users / max(args.warmup, 0.1))
    total = math.ceil(args.warmup + args.duration)  # Locust takes whole seconds
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--users", str(args.users), "--spawn-rate", f"{spawn_rate:g}", "--run-time", f"{total}s",
        "--host", url, "--csv", str(prefix), "--reset-stats", "--stop-timeout", "5",
        "--only-summary", "--loglevel", "ERROR", "--exit-code-on-error", "0",
    ]  # fmt: skip
    if args.processes > 1:
        command += ["--processes", str(args.processes)]
    command.append(endpoint.user_class)
    before = phase_sums(url)
    server_cpu_before = server.cpu_seconds() if server else 0.0
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    times = workdir / f"{endpoint.name}-times"
    times.mkdir(exist_ok=True)
    env = os.environ | {"LOADTEST_PODS": str(args.pods), "LOADTEST_TIMES_DIR": str(times)}
    interactive = sys.stdout.isatty()
    if not interactive:
        print(f"{label} {endpoint.name}: {args.users} users for {total:g} s", flush=True)
    with (workdir / f"{endpoint.name}.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)  # noqa: S603
        while process.poll() is None:
            if interactive:
                elapsed = min(time.monotonic() - started, total)
                print(f"\r{label} {endpoint.name}: {elapsed:4.0f}/{total:.0f} s ", end="", flush=True)
            time.sleep(0.5)
    wall = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.locust_exit_code = process.returncode
    cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    result.generator_cpu_percent = round(100 * cpu / wall, 1)
    if server is not None:
        result.server_cpu_percent = round(100 * (server.cpu_seconds() - server_cpu_before) / wall, 1)
    result.server_phase_mean_ms = phase_means(before, phase_sums(url), endpoint.path)
    if Path(f"{prefix}_stats.csv").exists():
        read_locust_stats(prefix, endpoint.path, result)
        read_response_times(times, result)
    else:
        log_tail = (workdir / f"{endpoint.name}.log").read_text(errors="replace")[-2000:]
        print(f"\nloadtest: Locust wrote no statistics for {endpoint.name}:\n{log_tail}", file=sys.stderr)
    start_of_line = "\r" if interactive else ""
    print(
        f"{start_of_line}{label} {endpoint.name}: {result.requests} requests, {result.rps} req/s, "
        f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, {result.failures} failures"
    )
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The runner's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m measure.loadtest.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--host", help="target server (loopback only); default: start one with the default model"
    )
    parser.add_argument("--users", type=int, default=32, help="concurrent Locust users per endpoint")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=3.0, help="ramp-up seconds before stats are reset")
    parser.add_argument("--pods", type=int, default=7, help="pods per request")
    parser.add_argument(
        "--processes", type=int, default=1, help="Locust processes (distributed mode when > 1)"
    )
    parser.add_argument(
        "--nthread", type=int, default=1, help="XGBoost nthread of the started server (0 = all)"
    )
    parser.add_argument("--threads", type=int, default=16, help="handler threads of the started server")
    parser.add_argument(
        "--endpoints", default=",".join(e.name for e in ENDPOINTS), help="comma-separated endpoint names"
    )
    parser.add_argument(
        "--max-failure-ratio", type=float, default=0.01, help="exit 1 above this failure ratio"
    )
    parser.add_argument("--out", type=Path, default=Path("loadtest-results"), help="output folder")
    args = parser.parse_args(argv)
    known = {endpoint.name for endpoint in ENDPOINTS}
    unknown = set(args.endpoints.split(",")) - known
    if unknown:
        parser.error(f"unknown endpoint(s) {sorted(unknown)}; choose from {sorted(known)}")
    if args.host and urllib.parse.urlparse(args.host).hostname not in LOOPBACK_HOSTS:
        parser.error("--host must be a loopback address (127.0.0.1, localhost or [::1])")
    if args.users < 1 or args.duration <= 0 or args.pods < 1 or args.processes < 1:
        parser.error("--users, --duration, --pods and --processes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; 0 when every endpoint served requests within the failure threshold."""
    args = parse_args(argv)
    selected = [endpoint for endpoint in ENDPOINTS if endpoint.name in args.endpoints.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[EndpointResult] = []
    with tempfile.TemporaryDirectory(prefix="loadtest-") as folder:
        workdir = Path(folder)
        server = None if args.host else ComparedServer(args.nthread, args.threads, workdir / "server.log")
        url = args.host.rstrip("/") if args.host else server.url  # type: ignore[union-attr]
        try:
            for index, endpoint in enumerate(selected, start=1):
                label = f"[{index}/{len(selected)}]"
                results.append(run_endpoint(endpoint, args, url, server=server, workdir=workdir, label=label))
        finally:
            if server is not None:
                server.stop()
    summary: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {
            "users": args.users,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "pods": args.pods,
            "processes": args.processes,
            "server": args.host or f"started here (nthread={args.nthread}, threads={args.threads})",
        },
        "endpoints": [asdict(result) | {"failure_ratio": result.failure_ratio} for result in results],
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(summary, args.out)
    print(f"wrote {args.out / 'report.md'}, {args.out / 'report.png'}, {args.out / 'results.json'}")
    failed = [result.name for result in results if result.failure_ratio > args.max_failure_ratio]
    if failed:
        print(
            f"loadtest: failure ratio above {args.max_failure_ratio} on: {', '.join(failed)}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
