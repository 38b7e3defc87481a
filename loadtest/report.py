"""The comparison report: ``report.md`` (tables) and ``report.png`` (latency percentiles and RPS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A single Locust process is one gevent loop on one core: near a full core it is the bottleneck.
SATURATED_CPU_PERCENT = 90.0


def write_report(summary: dict[str, Any], out: Path) -> None:
    """Write both report files from the runner's summary."""
    (out / "report.md").write_text(markdown(summary))
    chart(summary, out / "report.png")


def markdown(summary: dict[str, Any]) -> str:
    """The tables of ``report.md``."""
    settings, endpoints = summary["settings"], summary["endpoints"]
    processes = settings["processes"]
    lines = [
        "# Endpoint comparison",
        "",
        f"{settings['users']} Locust users per endpoint, {settings['pods']} pods per request, "
        f"{settings['duration_s']:g} s measured after {settings['warmup_s']:g} s ramp-up; "
        f"{processes} Locust process(es); machine: {summary['machine']['cpus']} CPUs; "
        f"server: {settings['server']}.",
        "",
        "| endpoint | design | req/s | p50 ms | p95 ms | p99 ms | max ms | failures | server CPU % "
        "| generator CPU % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    saturated = []
    for result in endpoints:
        generator = result["generator_cpu_percent"]
        flag = ""
        if generator >= SATURATED_CPU_PERCENT * processes:
            flag = " (saturated)"
            saturated.append(result["name"])
        server_cpu = "-" if result["server_cpu_percent"] is None else f"{result['server_cpu_percent']:.0f}"
        lines.append(
            f"| `{result['path']}` | {result['design']} | {result['rps']:.1f} | {result['p50_ms']:g} "
            f"| {result['p95_ms']:g} | {result['p99_ms']:g} | {result['max_ms']:g} | {result['failures']} "
            f"| {server_cpu} | {generator:.0f}{flag} |"
        )
    if saturated:
        lines += [
            "",
            f"**The load generator was saturated** on {', '.join(saturated)}: those figures measure Locust "
            "as much as the server. Rerun with `--processes N`, or with fewer users.",
        ]
    phases = sorted({phase for result in endpoints for phase in result["server_phase_mean_ms"]})
    lines += [
        "",
        "## Server-side mean per phase (ms, from the server's phase histograms)",
        "",
        "Per-pod phases (`queue wait`, `predict_one`) are means per pod; the rest per request.",
        "",
        "| endpoint | " + " | ".join(phases) + " |",
        "|---|" + "---:|" * len(phases),
    ]
    for result in endpoints:
        means = result["server_phase_mean_ms"]
        cells = [f"{means[phase]:.3f}" if phase in means else "" for phase in phases]
        lines.append(f"| `{result['path']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(summary: dict[str, Any], path: Path) -> None:
    """Latency percentiles (log scale) and throughput per endpoint, side by side."""
    import matplotlib as mpl  # noqa: PLC0415  (only the report needs it)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    endpoints = summary["endpoints"]
    names = [result["name"] for result in endpoints]
    positions = list(range(len(names)))
    figure, (latency_axis, rps_axis) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.27
    for offset, key, label in ((-width, "p50_ms", "p50"), (0.0, "p95_ms", "p95"), (width, "p99_ms", "p99")):
        values = [max(result[key], 0.01) for result in endpoints]
        latency_axis.bar([p + offset for p in positions], values, width, label=label)
    latency_axis.set_yscale("log")
    latency_axis.set_ylabel("latency (ms, log scale)")
    latency_axis.set_title("Latency percentiles")
    latency_axis.set_xticks(positions, names, rotation=30, ha="right")
    latency_axis.legend()
    rps_axis.bar(positions, [result["rps"] for result in endpoints], color="tab:green")
    rps_axis.set_ylabel("requests per second")
    rps_axis.set_title("Throughput")
    rps_axis.set_xticks(positions, names, rotation=30, ha="right")
    settings = summary["settings"]
    figure.suptitle(
        f"{settings['users']} users, {settings['pods']} pods/request, {summary['machine']['cpus']} CPUs"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
