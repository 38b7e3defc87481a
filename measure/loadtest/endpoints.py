"""The endpoints the comparison drives, in report order (no Locust import: safe for any process)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint: its short name, route, Locust user class and what design it is."""

    name: str
    path: str
    user_class: str
    design: str


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "to-thread",
        "/seed/to-thread",
        "ToThreadUser",
        "seed (the post's original): per-pod to_thread + gather",
    ),
    Endpoint(
        "thread-pool",
        "/seed/thread-pool",
        "ThreadPoolUser",
        "seed (solution 1): new pool per request",
    ),
    Endpoint(
        "dedicated-pool",
        "/seed/dedicated-pool",
        "DedicatedPoolUser",
        "seed (solution 2): shared pool",
    ),
    Endpoint(
        "seed-batch",
        "/seed/batch",
        "SeedBatchUser",
        "seed (solution 3): one DataFrame per request",
    ),
    Endpoint("v1-predict", "/v1/predict", "V1PredictUser", "ours: float32 matrix, compiled trees, batched"),
    Endpoint("llmd-bulk-strict", "/predict/bulk/strict", "LlmdBulkStrictUser", "ours via llm-d's bulk API"),
)
