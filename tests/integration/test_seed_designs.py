"""The seed post's designs, an extension of a real server: same answers as /v1/predict, off by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from measure import seed_designs
from podlatency.learning.workload import pod_rows

DESIGNS = ["to-thread", "thread-pool", "dedicated-pool", "batch"]


def test_seed_designs_predict_what_v1_predicts(model_dir: Path, start_server: Any) -> None:
    """Every design answers one prediction per pod, in order, equal to /v1/predict within float tolerance."""
    server = start_server(model_dir, **seed_designs.serving_env())
    server.wait_for("/readyz", 200)
    rows = [row | {"pod": f"p{index}"} for index, row in enumerate(pod_rows(7, seed=31))]
    ours = server.request("POST", "/v1/predict", {"pods": rows}).json()
    for design in DESIGNS:
        answer = server.request("POST", f"/seed/{design}", {"pods": rows})
        assert answer.status == 200, (design, answer.body[:300])
        body = answer.json()
        assert body["model_version"] == ours["model_version"]
        assert [p["pod"] for p in body["predictions"]] == [f"p{index}" for index in range(7)]
        for theirs, mine in zip(body["predictions"], ours["predictions"], strict=True):
            assert theirs["ttft_ms"] == pytest.approx(mine["ttft_ms"], rel=1e-5), design
            assert theirs["tpot_ms"] == pytest.approx(mine["tpot_ms"], rel=1e-5), design


def test_seed_designs_validate_like_v1(model_dir: Path, start_server: Any) -> None:
    """A bad body is the same 4xx on every design as on /v1/predict."""
    server = start_server(model_dir, **seed_designs.serving_env())
    server.wait_for("/readyz", 200)
    for design in DESIGNS:
        answer = server.request("POST", f"/seed/{design}", {"pods": [{"kv_cache_percentage": 3}]})
        assert answer.status == 422, design
        assert answer.json()["field"] == "pods[0].kv_cache_percentage"


def test_seed_designs_are_off_by_default(model_dir: Path, start_server: Any) -> None:
    """Without PODLATENCY_EXTENSIONS the routes are absent (404); /v1/predict serves."""
    server = start_server(model_dir)
    server.wait_for("/readyz", 200)
    for design in DESIGNS:
        assert server.request("POST", f"/seed/{design}", {"pods": pod_rows(1)}).status == 404
    assert server.request("POST", "/v1/predict", {"pods": pod_rows(1)}).status == 200
