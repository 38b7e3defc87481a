"""The synthetic workload is deterministic and shaped the way its docstring says."""

from __future__ import annotations

import numpy as np

from podlatency.learning.workload import generate, pod_rows
from podlatency.schema import FEATURE_NAMES


def column(name: str) -> int:
    return FEATURE_NAMES.index(name)


def test_same_seed_same_rows() -> None:
    """One seed always draws the same pods and latencies; another seed draws others."""
    first, again, other = generate(500, seed=9), generate(500, seed=9), generate(500, seed=10)
    np.testing.assert_array_equal(first.features, again.features)
    np.testing.assert_array_equal(first.ttft_ms, again.ttft_ms)
    assert not np.array_equal(first.ttft_ms, other.ttft_ms)


def test_ttft_grows_with_uncached_tokens_and_queue() -> None:
    """Pods with more uncached prompt tokens, or with a queue, see higher TTFT on average."""
    sample = generate(20_000, seed=1)
    uncached = sample.features[:, column("uncached_input_tokens")]
    waiting = sample.features[:, column("num_request_waiting")]
    idle = waiting == 0
    assert (
        sample.ttft_ms[idle & (uncached > 2000)].mean() > 2 * sample.ttft_ms[idle & (uncached < 200)].mean()
    )
    assert sample.ttft_ms[waiting >= 5].mean() > 2 * sample.ttft_ms[idle].mean()


def test_queued_pods_have_heavier_tails() -> None:
    """TTFT relative spread (p99 / median) is larger on queued pods (text-only prompts of similar size)."""
    sample = generate(20_000, seed=2)
    waiting = sample.features[:, column("num_request_waiting")]
    uncached = sample.features[:, column("uncached_input_tokens")]
    text_only = sample.features[:, column("encoder_input_size")] == 0
    band = (uncached > 300) & (uncached < 900) & text_only

    def spread(mask: np.ndarray) -> float:
        values = sample.ttft_ms[mask & band]
        return float(np.percentile(values, 99) / np.median(values))

    assert spread(waiting >= 5) > spread(waiting == 0)


def test_tpot_grows_with_running_requests() -> None:
    """Busier pods (more running requests) decode slower."""
    sample = generate(20_000, seed=3)
    running = sample.features[:, column("num_request_running")]
    assert sample.tpot_ms[running >= 14].mean() > sample.tpot_ms[running <= 4].mean() * 1.3


def test_pod_rows_are_valid_request_rows() -> None:
    """Generated rows carry the llm-d field names with in-range values and a mix of idle and queued pods."""
    rows = pod_rows(200, seed=5)
    assert {"kv_cache_percentage", "pod_type", "num_request_waiting"} <= set(rows[0])
    assert all(0 <= row["kv_cache_percentage"] <= 1 for row in rows)  # type: ignore[operator]
    waiting = [int(str(row["num_request_waiting"])) for row in rows]
    assert 0 in waiting
    assert max(waiting) > 0
