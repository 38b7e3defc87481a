"""Observed samples: regime-balanced bounded buckets, a held-out slice, nothing lost on restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from podlatency.errors import InvalidField
from podlatency.samples import ObservedSample, SamplesRequest, SampleStore, regime_of
from podlatency.schema import decode_json

BASE: dict[str, Any] = {
    "kv_cache_percentage": 0.2,
    "input_token_length": 500,
    "num_request_waiting": 0,
    "num_request_running": 3,
    "num_tokens_generated": 0,
    "prefix_cache_score": 0.0,
    "actual_ttft_ms": 80.0,
    "actual_tpot_ms": 9.0,
}


def sample(**changes: Any) -> ObservedSample:
    return msgspec.convert(BASE | changes, ObservedSample)


def test_a_flood_from_one_regime_keeps_the_others(tmp_path: Path) -> None:
    """10,000 idle-pod samples fill their own bucket only; the queued-pod samples all stay."""
    store = SampleStore(tmp_path, per_bucket=100, holdout_every=1_000_000)
    store.add([sample(num_request_waiting=20, kv_cache_percentage=0.9) for _ in range(50)])
    store.add([sample() for _ in range(10_000)])
    counts = store.counts()
    assert counts["training"] == 150
    assert counts["regimes"] == 2
    features = store.training_set().features
    assert (features[:, 2] == 20).sum() == 50


def test_every_nth_sample_is_held_out(tmp_path: Path) -> None:
    """With holdout_every=5, a fifth of the samples is kept apart for evaluation."""
    store = SampleStore(tmp_path, per_bucket=1000, holdout_every=5)
    store.add([sample(actual_ttft_ms=float(index)) for index in range(100)])
    assert store.counts() | {"regimes": 0} == {"training": 80, "holdout": 20, "regimes": 0}
    assert len(store.training_set(holdout=True).targets["ttft"]) == 20


def test_samples_survive_a_restart(tmp_path: Path) -> None:
    """A new store on the same folder holds exactly what the old one accepted."""
    first = SampleStore(tmp_path, per_bucket=1000)
    first.add([sample(actual_ttft_ms=float(index)) for index in range(37)])
    again = SampleStore(tmp_path, per_bucket=1000)
    assert again.counts() == first.counts()
    assert sorted(again.training_set().targets["ttft"]) == sorted(first.training_set().targets["ttft"])


def test_the_file_is_compacted_to_what_is_kept(tmp_path: Path) -> None:
    """Past twice the buckets' capacity the file is rewritten; a restart still sees the kept samples."""
    store = SampleStore(tmp_path, per_bucket=2, holdout_every=1_000_000)
    for _ in range(200):
        store.add([sample(), sample(num_request_waiting=5)])
    lines = store.path.read_text().splitlines()
    assert len(lines) <= 2 * store.capacity()
    assert SampleStore(tmp_path, per_bucket=2, holdout_every=1_000_000).counts()["training"] == 4


def test_regimes_split_queue_kv_and_prefix() -> None:
    """Idle, queued, KV-pressured and prefix-cached pods fall into different regimes."""
    regimes = {
        regime_of(sample()),
        regime_of(sample(num_request_waiting=2)),
        regime_of(sample(kv_cache_percentage=0.95)),
        regime_of(sample(prefix_cache_score=0.7)),
    }
    assert len(regimes) == 4


def test_a_bad_row_is_named_and_refuses_the_request() -> None:
    """A negative latency in row 3 is a 422 on `samples[3].actual_ttft_ms`."""
    rows = [BASE] * 3 + [BASE | {"actual_ttft_ms": -1}]
    with pytest.raises(InvalidField) as caught:
        decode_json(msgspec.json.encode({"samples": rows}), SamplesRequest)
    assert caught.value.field == "samples[3].actual_ttft_ms"
