"""The comparison report: ``report.md`` (tables) and ``report.png`` (latency percentiles and RPS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A single Locust process is one gevent loop on one core: near a full core it is the bottleneck.
SATURATED_CPU_PERCENT = 90.0

PHASE_ORDER = (
    "dispatch", "decode", "queue_wait", "predict_one", "gather", "pool_map", "frame", "batch_wait",
    "predict_ttft", "predict_tpot", "resume", "encode", "respond",
)  # fmt: skip
"""Phases in the order a request goes through them; any other phase follows, by name."""

OURS_COLOUR, SEED_COLOUR = "tab:blue", "tab:gray"


def in_request_order(phases: set[str]) -> list[str]:
    """``phases`` in :data:`PHASE_ORDER`, then the rest by name."""
    known = [phase for phase in PHASE_ORDER if phase in phases]
    return known + sorted(phases - set(PHASE_ORDER))


def is_ours(result: dict[str, Any]) -> bool:
    """Whether an endpoint is one of podlatency's own (the rest are the seed post's designs)."""
    return bool(str(result["design"]).startswith("ours"))


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
        latencies = " | ".join(_milliseconds(result[key]) for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))
        lines.append(
            f"| `{result['path']}` | {result['design']} | {result['rps']:.1f} | {latencies} "
            f"| {result['failures']} | {server_cpu} | {generator:.0f}{flag} |"
        )
    if saturated:
        lines += [
            "",
            f"**The load generator was saturated** on {', '.join(saturated)}: those figures measure Locust "
            "as much as the server. Rerun with `--processes N`, or with fewer users.",
        ]
    phases = in_request_order({phase for result in endpoints for phase in result["server_phase_mean_ms"]})
    lines += [
        "",
        "## Server-side mean per phase (ms, from the server's phase histograms)",
        "",
        "Columns in the order a request goes through its phases. Per-pod phases (`queue_wait`, "
        "`predict_one`) are means per pod; the rest per request.",
        "",
        "| endpoint | " + " | ".join(phases) + " |",
        "|---|" + "---:|" * len(phases),
    ]
    for result in endpoints:
        means = result["server_phase_mean_ms"]
        cells = [f"{means[phase]:.3f}" if phase in means else "" for phase in phases]
        lines.append(f"| `{result['path']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _milliseconds(value: float) -> str:
    """Fractional milliseconds below 10 ms (2.345), whole ones above (1200)."""
    return f"{value:.3f}" if value < 10 else f"{value:.0f}"


def chart(summary: dict[str, Any], path: Path) -> None:
    """Latency percentiles and throughput per endpoint, on log scales; ours in colour, the seed's grey."""
    import matplotlib as mpl  # noqa: PLC0415  (only the report needs it)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    endpoints = summary["endpoints"]
    names = [result["name"] for result in endpoints]
    positions = list(range(len(names)))
    colours = [OURS_COLOUR if is_ours(result) else SEED_COLOUR for result in endpoints]
    figure, (latency_axis, rps_axis) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.27
    shades = ((-width, "p50_ms", "p50", 1.0), (0.0, "p95_ms", "p95", 0.65), (width, "p99_ms", "p99", 0.35))
    for offset, key, label, alpha in shades:
        values = [max(result[key], 0.01) for result in endpoints]
        latency_axis.bar(
            [p + offset for p in positions], values, width, color=colours, alpha=alpha, label=label
        )
    latency_axis.set_yscale("log")
    latency_axis.set_ylim(bottom=min(max(result["p50_ms"], 0.01) for result in endpoints) / 2)
    latency_axis.set_ylabel("latency (ms, log scale)")
    latency_axis.set_title("Latency: p50, p95, p99 (darker to lighter)")
    latency_axis.set_xticks(positions, names, rotation=30, ha="right")
    rps = [max(result["rps"], 0.1) for result in endpoints]
    bars = rps_axis.bar(positions, rps, color=colours)
    rps_axis.bar_label(bars, labels=[f"{value:,.0f}" for value in rps], fontsize=8)
    rps_axis.set_yscale("log")
    rps_axis.set_ylabel("requests per second (log scale)")
    rps_axis.set_title("Throughput")
    rps_axis.set_xticks(positions, names, rotation=30, ha="right")
    from matplotlib.patches import Patch  # noqa: PLC0415

    legend = [Patch(color=OURS_COLOUR, label="podlatency"), Patch(color=SEED_COLOUR, label="seed post")]
    rps_axis.legend(handles=legend, loc="upper left")
    settings = summary["settings"]
    figure.suptitle(
        f"{settings['users']} users, {settings['pods']} pods/request, {summary['machine']['cpus']} CPUs"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
