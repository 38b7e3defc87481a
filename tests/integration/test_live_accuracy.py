"""Live accuracy through real processes: a trainer scores the router's rows; a predictor scores none."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from podlatency.learning.workload import router_observations
from tests.integration.conftest import ServerProcess

TRAINER_ENV = {
    "PODLATENCY_DEFAULT_SAMPLES": "5000",
    "PODLATENCY_RETRAIN_INTERVAL_S": "0",
    "PODLATENCY_RETRAIN_MIN_SAMPLES": "100",
    "PODLATENCY_ENGINE": "xgboost",
}


def post(server: ServerProcess, rows: list[dict[str, object]], batch: int = 2000) -> None:
    """Rows as the router posts them, in bulk calls."""
    for start in range(0, len(rows), batch):
        answer = server.request("POST", "/add_training_data_bulk", {"entries": rows[start : start + batch]})
        assert answer.status == 202, answer.body[:300]


def live_once_scored(server: ServerProcess, ttft_rows: int, timeout: float = 30.0) -> dict[str, Any]:
    """``/v1/model``'s live section once the served model's TTFT window has scored ``ttft_rows`` rows.

    The scorer may still be on rows that arrived under an earlier model (it works a tenth of the time).
    """
    deadline = time.monotonic() + timeout
    while True:
        model = server.request("GET", "/v1/model").json()
        live: dict[str, Any] = model["live"]
        ttft = live["targets"].get("ttft")
        if live["model_version"] == model["version"] and ttft is not None and ttft["scored"] >= ttft_rows:
            return live
        assert time.monotonic() < deadline, f"never scored {ttft_rows} rows: {json.dumps(live)[:500]}"
        time.sleep(0.1)


def metric(server: ServerProcess, line_start: str) -> float:
    for line in server.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starting {line_start!r}")


def test_a_trainer_scores_router_rows_and_flags_a_fleet_that_slowed(
    tmp_path: Path, start_server: Any
) -> None:
    """Learn the fleet, stream 20,000 more of its rows (no drift), then rows twice as slow (drift).

    Through a real server: the router's bulk route, ``/v1/retrain``, ``/v1/model``, ``/status`` and
    ``/metrics``.
    """
    server = start_server(tmp_path / "models", **TRAINER_ENV)
    server.wait_for("/readyz", 200, timeout=120)
    post(server, router_observations(4000, seed=1))
    retrained = server.request("POST", "/v1/retrain").json()
    assert retrained["published"], retrained
    version = server.request("GET", "/v1/model").json()["version"]

    post(server, router_observations(10_000, seed=2))  # 20,000 rows: half TTFT-only, half TPOT-only
    live = live_once_scored(server, 10_000)
    assert live["scoring"] is True
    assert live["model_version"] == version
    assert live["unscored_rows"] == 0
    for target in ("ttft", "tpot"):
        figures = live["targets"][target]
        assert figures["scored"] == 10_000
        assert not figures["drift"], figures["drift_reason"]
        assert figures["window"]["rows"] == 5000, "PODLATENCY_LIVE_WINDOW"
        assert figures["window"]["median_relative_error"] > 0
        assert figures["training"]["median_relative_error"] > 0
        assert figures["by_regime"], "per-regime figures"
    assert metric(server, 'podlatency_drift{target="ttft"}') == 0
    scored_total = metric(server, 'podlatency_live_scored_total{target="tpot"}')
    assert scored_total == 4_000 + 10_000, "a counter over every model: the embedded default's rows too"

    post(server, router_observations(3000, seed=3, slowdown=2.0), batch=500)
    live = live_once_scored(server, 13_000)
    for target in ("ttft", "tpot"):
        assert live["targets"][target]["drift"], live["targets"][target]
        assert metric(server, f'podlatency_drift{{target="{target}"}}') == 1
    assert metric(server, 'podlatency_live_median_relative_error{target="ttft"}') > 0.2
    status = server.request("GET", "/status").json()
    assert status["live"]["targets"]["ttft"]["drift"] is True
    assert "drifted" in server.log(), "the episode is logged"


def test_a_predictor_says_it_scores_nothing(tmp_path: Path, model_dir: Path, start_server: Any) -> None:
    """A predictor receives no observations: its live section says so instead of showing zeros."""
    server = start_server(model_dir, PODLATENCY_ROLE="predictor")
    server.wait_for("/readyz", 200)
    for path in ("/v1/model", "/status"):
        live = server.request("GET", path).json()["live"]
        assert live["scoring"] is False
        assert "receives no observations" in live["reason"]
        assert live["targets"] == {}
    assert "podlatency_live_scored_total" not in server.request("GET", "/metrics").body.decode()


def test_drift_retrains_at_once_and_live_error_comes_back(tmp_path: Path, start_server: Any) -> None:
    """A fleet whose latencies double: drift starts a retrain at once, which publishes, and live is fine.

    The interval is an hour, so only drift can retrain here; the new model learned from the recent
    rows, and its own live figures on the slower fleet stay within the drift rule.
    """
    server = start_server(tmp_path / "models", **(TRAINER_ENV | {"PODLATENCY_RETRAIN_INTERVAL_S": "3600"}))
    server.wait_for("/readyz", 200, timeout=120)
    post(server, router_observations(4000, seed=11))
    assert server.request("POST", "/v1/retrain").json()["published"]
    learned = server.request("GET", "/v1/model").json()["version"]
    post(server, router_observations(3000, seed=12))
    assert not live_once_scored(server, 3000)["targets"]["ttft"]["drift"]

    # The slower fleet until drift has published a model that live accuracy finds right.
    deadline, seed = time.monotonic() + 180, 100
    while True:
        post(server, router_observations(250, seed=seed, slowdown=2.0))
        seed += 1
        model = server.request("GET", "/v1/model").json()
        live = model["live"]
        settled = live["model_version"] == model["version"] != learned and all(
            (live["targets"][target]["window"] or {}).get("rows", 0) >= 1000
            and not live["targets"][target]["drift"]
            for target in ("ttft", "tpot")
        )
        if settled:
            break
        assert time.monotonic() < deadline, f"drift never led to a model that fits: {json.dumps(live)[:800]}"
    assert metric(server, 'podlatency_retrains_total{outcome="published",reason="drift"}') >= 1
    assert "drifted; retraining on the recent rows now" in server.log()
    for target in ("ttft", "tpot"):
        figures = live["targets"][target]
        trained = figures["training"]["median_relative_error"]
        assert figures["window"]["median_relative_error"] <= max(2 * trained, trained + 0.10), figures
    published = metric(server, 'podlatency_retrains_total{outcome="published",reason="drift"}')
    print(f"drift retrains published: {published:g}")
