"""Observed samples: per-target rows, regime-fair buckets, a held-out slice, nothing lost on restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from podlatency.errors import InvalidField
from podlatency.learning.samples import REGIMES, SampleStore, regime_of
from podlatency.llmd_schema import TrainingDataBulkRequest
from podlatency.schema import FEATURE_NAMES, ObservedSample, SamplesRequest, decode_json

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
NEVER = 1_000_000  # holdout_every that holds nothing out


def sample(**changes: Any) -> ObservedSample:
    return msgspec.convert(BASE | changes, ObservedSample)


def test_a_flood_from_one_regime_keeps_the_others(tmp_path: Path) -> None:
    """Past the budget, a flood of idle-pod rows evicts its own rows: the queued-pod rows all stay."""
    store = SampleStore(tmp_path, per_bucket=10, holdout_every=NEVER)
    store.add([sample(num_request_waiting=20, kv_cache_percentage=0.9) for _ in range(50)])
    store.add([sample(actual_ttft_ms=float(index + 1)) for index in range(10_000)])
    counts = store.counts()
    assert counts["ttft_training"] == store.capacity() == 10 * REGIMES
    regimes = store.bucket_counts()["ttft"]
    assert regimes[regime_of(sample(num_request_waiting=20, kv_cache_percentage=0.9))] == 50
    kept_idle = store.training_set().by_target["ttft"].observed_ms
    assert kept_idle.max() == 10_000.0, "the newest idle rows are the ones kept"


def test_one_regime_keeps_more_than_its_share_while_others_are_empty(tmp_path: Path) -> None:
    """A deployment that sits in one regime trains on all its rows, not on one regime's share."""
    store = SampleStore(tmp_path, per_bucket=100, holdout_every=NEVER)
    store.add([sample(actual_ttft_ms=float(index + 1)) for index in range(2_700)])
    assert store.counts()["ttft_training"] == 2_700


def test_zero_actuals_are_not_observed(tmp_path: Path) -> None:
    """A TTFT-only row trains TTFT only, a TPOT-only row TPOT only; a row with neither is not kept."""
    store = SampleStore(tmp_path, holdout_every=NEVER)
    result = store.add(
        [sample(actual_tpot_ms=0.0)] * 3
        + [sample(actual_ttft_ms=0.0, actual_tpot_ms=7.0)] * 2
        + [sample(actual_ttft_ms=0.0, actual_tpot_ms=0.0)]
    )
    assert (result.accepted, result.kept, result.unobserved) == (6, {"ttft": 3, "tpot": 2}, 1)
    training = store.training_set().by_target
    assert training["ttft"].observed_ms.tolist() == [80.0] * 3
    assert training["tpot"].observed_ms.tolist() == [7.0] * 2
    assert training["ttft"].features.shape == (3, len(FEATURE_NAMES))
    assert len(store.path.read_text().splitlines()) == 5, "the unobserved row is not written"


def test_every_nth_row_of_each_target_is_held_out(tmp_path: Path) -> None:
    """With holdout_every=5, a fifth of each target's rows is kept apart, however the two kinds interleave."""
    store = SampleStore(tmp_path, per_bucket=1000, holdout_every=5)
    rows = []
    for index in range(100):
        rows.append(sample(actual_ttft_ms=float(index + 1), actual_tpot_ms=0.0))
        rows.append(sample(actual_ttft_ms=0.0, actual_tpot_ms=float(index + 1)))
    store.add(rows)
    assert store.counts() == {
        "ttft_training": 80,
        "tpot_training": 80,
        "ttft_holdout": 20,
        "tpot_holdout": 20,
    }
    assert len(store.training_set(holdout=True).by_target["tpot"]) == 20


def test_samples_and_their_split_survive_a_restart(tmp_path: Path) -> None:
    """A new store on the same folder holds exactly what the old one held, held-out rows still held out."""
    first = SampleStore(tmp_path, per_bucket=1000, holdout_every=4)
    first.add([sample(actual_ttft_ms=float(index + 1)) for index in range(37)])
    first.add([sample(actual_ttft_ms=0.0, actual_tpot_ms=float(index + 1)) for index in range(11)])
    again = SampleStore(tmp_path, per_bucket=1000, holdout_every=4)
    assert again.counts() == first.counts()
    for holdout in (False, True):
        for target in ("ttft", "tpot"):
            before = first.training_set(holdout=holdout).by_target[target].observed_ms
            after = again.training_set(holdout=holdout).by_target[target].observed_ms
            assert sorted(after) == sorted(before)


def test_the_file_is_compacted_to_what_is_kept(tmp_path: Path) -> None:
    """Past twice the budget the file is rewritten; a restart still sees the kept samples."""
    store = SampleStore(tmp_path, per_bucket=1, holdout_every=NEVER)
    for _ in range(200):
        store.add([sample(), sample(num_request_waiting=5)])
    lines = store.path.read_text().splitlines()
    assert len(lines) <= 2 * 2 * store.capacity()
    assert SampleStore(tmp_path, per_bucket=1, holdout_every=NEVER).counts()["ttft_training"] == REGIMES


def test_a_flush_reaches_the_files(tmp_path: Path) -> None:
    """Flushed training rows do not come back after a restart; the held-out ones stay when not flushed."""
    store = SampleStore(tmp_path, per_bucket=1000, holdout_every=2)
    store.add([sample(actual_ttft_ms=float(index + 1)) for index in range(20)])
    flushed = store.flush(training=True, holdout=False)
    assert flushed == {"training": {"ttft": 10, "tpot": 10}, "holdout": {"ttft": 0, "tpot": 0}}
    again = SampleStore(tmp_path, per_bucket=1000, holdout_every=2)
    assert again.counts() == {"ttft_training": 0, "tpot_training": 0, "ttft_holdout": 10, "tpot_holdout": 10}


def test_a_single_file_from_before_is_split_once(tmp_path: Path) -> None:
    """A samples.jsonl holding both splits (as written before held-out rows had their own file) is split."""
    rows = [sample(actual_ttft_ms=float(index + 1)) for index in range(30)]
    (tmp_path / "samples.jsonl").write_bytes(b"".join(msgspec.json.encode(row) + b"\n" for row in rows))
    store = SampleStore(tmp_path, per_bucket=1000, holdout_every=10)
    assert store.counts()["ttft_holdout"] == 3
    assert len(store.holdout_path.read_text().splitlines()) == 3
    assert SampleStore(tmp_path, per_bucket=1000, holdout_every=10).counts() == store.counts()


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


@pytest.mark.parametrize(
    "timestamp",
    ["2026-12-01T20:49:31.123456789Z", "0001-01-01T00:00:00Z", "2026-12-01T21:49:31+01:00", None],
)
def test_router_timestamps_are_accepted(timestamp: str | None) -> None:
    """Go's RFC3339 forms (nanoseconds, an offset, the zero time) and no timestamp all decode."""
    body = {"entries": [BASE | {"timestamp": timestamp, "encoder_input_size": 2, "encoder_matched_size": 1}]}
    entry = decode_json(msgspec.json.encode(body), TrainingDataBulkRequest, lax=True).entries[0]
    assert (entry.timestamp is None) == (timestamp is None)
    assert (entry.encoder_input_size, entry.encoder_matched_size) == (2, 1)
