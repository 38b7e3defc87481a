"""Observed latencies reported by the router, kept per target in bounded buckets and persisted.

A sample is a pod's metrics at scheduling time plus the TTFT and TPOT the request actually saw. **An
actual of 0 means "not observed"**: the llm-d router sends a TTFT row (``actual_tpot_ms`` 0) when the
first token streams, and a TPOT row (``actual_ttft_ms`` 0) when the stream ends. So each target keeps,
holds out and trains on only the rows it was observed on; a row with both actuals at 0 is accepted
and not kept.

Each target's rows are kept per *regime* (queue depth x KV-cache use x prefix-cache score) within a
budget of ``per_bucket`` rows per regime in all (36 regimes). A regime may hold more than
``per_bucket`` while others hold less; once the budget is full, the oldest row of the largest regime
makes room. So a flood from one regime (an idle cluster, say) cannot evict the others, and a
deployment that sits in one regime still trains on all its recent rows, not on one regime's share.

Every ``holdout_every``-th row of a target is held out, to evaluate candidates on. Training rows are
appended to ``samples.jsonl`` and held-out ones to ``holdout.jsonl`` (fsynced) before the request is
answered, and replayed on start, so a restart loses none and a held-out row stays held out. A file is
compacted to what its buckets hold once it grows past twice their budget; :meth:`SampleStore.flush`
rewrites it at once.

Each split also remembers each target's last rows in arrival order, whatever their regime (the
last ``recent_rows`` arrivals): a retrain after drift learns the fleet as it is now from them
(:mod:`podlatency.learning.retraining`).
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from podlatency.learning.training import TargetRows, TrainingSet
from podlatency.metrics import service_metrics
from podlatency.schema import TARGETS, ObservedSample, PodMetrics, StrictObservedSample, feature_matrix

QUEUE_EDGES = (1, 4, 16)  # waiting: 0 | 1-3 | 4-15 | 16+
KV_EDGES = (0.5, 0.8)  # KV-cache use: < 0.5 | 0.5-0.8 | >= 0.8
PREFIX_EDGES = (1e-9, 0.5)  # prefix-cache score: 0 | (0, 0.5) | >= 0.5
REGIMES = (len(QUEUE_EDGES) + 1) * (len(KV_EDGES) + 1) * (len(PREFIX_EDGES) + 1)


Regime = tuple[int, int, int]
AnySample = ObservedSample | StrictObservedSample


def regime_of(sample: PodMetrics) -> Regime:
    """The bucket a sample belongs to."""
    return (
        sum(sample.num_request_waiting >= edge for edge in QUEUE_EDGES),
        sum(sample.kv_cache_percentage >= edge for edge in KV_EDGES),
        sum(sample.prefix_cache_score >= edge for edge in PREFIX_EDGES),
    )


def regime_index(regime: Regime) -> int:
    """A regime as one number (0-35), as the ``bucket`` label of ``training_samples_count``."""
    queue, cache, prefix = regime
    return (queue * (len(KV_EDGES) + 1) + cache) * (len(PREFIX_EDGES) + 1) + prefix


def actual_ms(sample: AnySample, target: str) -> float:
    """A sample's observed latency for ``target`` (0 when not observed)."""
    return sample.actual_ttft_ms if target == "ttft" else sample.actual_tpot_ms


def observed_targets(sample: AnySample) -> list[str]:
    """The targets a sample was observed for."""
    return [target for target in TARGETS if actual_ms(sample, target) > 0]


@dataclass(frozen=True, slots=True)
class AddResult:
    """What one call to :meth:`SampleStore.add` kept."""

    accepted: int
    kept: dict[str, int]
    unobserved: int


class _Split:
    """The training or held-out rows of every target, and the file they are persisted in."""

    def __init__(self, path: Path, per_bucket: int, recent_rows: int) -> None:
        self.path = path
        self.budget = per_bucket * REGIMES
        self.buckets: dict[str, dict[Regime, collections.deque[AnySample]]] = {
            target: {} for target in TARGETS
        }
        self.recent = {target: collections.deque[AnySample](maxlen=recent_rows) for target in TARGETS}
        """Each target's last rows in the order they arrived, whatever their regime."""
        self.sizes = dict.fromkeys(TARGETS, 0)
        self.lines_on_disk = 0

    def keep(self, sample: AnySample, targets: Iterable[str]) -> None:
        regime = regime_of(sample)
        for target in targets:
            buckets = self.buckets[target]
            buckets.setdefault(regime, collections.deque()).append(sample)
            self.recent[target].append(sample)
            self.sizes[target] += 1
            if self.sizes[target] > self.budget:
                # The oldest row of the largest regime makes room: floods evict their own rows.
                max(buckets.values(), key=len).popleft()
                self.sizes[target] -= 1

    def samples(self, target: str) -> list[AnySample]:
        return [sample for bucket in self.buckets[target].values() for sample in bucket]

    def distinct_samples(self) -> list[AnySample]:
        """Every kept row once (a row observed for both targets is in both targets' buckets)."""
        unique = {id(sample): sample for target in TARGETS for sample in self.samples(target)}
        return list(unique.values())

    def clear(self) -> dict[str, int]:
        flushed = dict(self.sizes)
        for target in TARGETS:
            self.buckets[target].clear()
            self.recent[target].clear()
            self.sizes[target] = 0
        return flushed

    def append(self, encoded: bytes, lines: int) -> None:
        with self.path.open("ab") as handle:
            handle.write(encoded)
            handle.flush()
            os.fsync(handle.fileno())
        self.lines_on_disk += lines

    def rewrite(self) -> None:
        """Replace the file with exactly the kept rows (atomically: a crash leaves the old or the new)."""
        kept = self.distinct_samples()
        staging = self.path.with_suffix(".jsonl.tmp")
        with staging.open("wb") as handle:
            handle.write(b"".join(msgspec.json.encode(sample) + b"\n" for sample in kept))
            handle.flush()
            os.fsync(handle.fileno())
        staging.replace(self.path)
        self.lines_on_disk = len(kept)


class SampleStore:
    """Per-target, regime-balanced, persisted samples with a held-out slice."""

    def __init__(
        self, folder: Path, per_bucket: int = 2000, holdout_every: int = 10, recent_rows: int = 5000
    ) -> None:
        self.path = folder / "samples.jsonl"
        self.holdout_path = folder / "holdout.jsonl"
        self.per_bucket = per_bucket
        self.holdout_every = holdout_every
        self.recent_rows = recent_rows
        self._lock = threading.Lock()
        self._train = _Split(self.path, per_bucket, recent_rows)
        self._holdout = _Split(self.holdout_path, per_bucket, self._recent_held_out())
        self._seen_by_target = dict.fromkeys(TARGETS, 0)
        self._seen = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._replay()
        for path in (self.path, self.holdout_path):
            path.touch(exist_ok=True)
        self._publish_counts()

    def _recent_held_out(self) -> int:
        """Held-out rows among a target's last ``recent_rows`` arrivals: both splits span the same rows."""
        return max(1, self.recent_rows // self.holdout_every)

    def _replay(self) -> None:
        decoder = msgspec.json.Decoder(ObservedSample)
        legacy = self.path.exists() and not self.holdout_path.exists()
        for split in (self._train, self._holdout):
            if not split.path.exists():
                continue
            for line in split.path.read_bytes().splitlines():
                if line.strip():
                    sample = decoder.decode(line)
                    # One file of both splits (written before held-out rows had their own): split it again.
                    self._keep(sample, into=None if legacy else split)
                    split.lines_on_disk += 1
        if legacy:
            self._train.rewrite()
            self._holdout.rewrite()

    def reload(self) -> None:
        """Forget what is held and replay the files (a trainer taking over a shared volume's samples)."""
        with self._lock:
            self._train = _Split(self.path, self.per_bucket, self.recent_rows)
            self._holdout = _Split(self.holdout_path, self.per_bucket, self._recent_held_out())
            self._seen_by_target = dict.fromkeys(TARGETS, 0)
            self._seen = 0
            self._replay()
        self._publish_counts()

    def _split_for(self, seen: int) -> _Split:
        """Where the ``seen``-th row of a target goes: every ``holdout_every``-th is held out."""
        return self._holdout if seen % self.holdout_every == 0 else self._train

    def _keep(self, sample: AnySample, into: _Split | None = None) -> None:
        """Keep an observed row in ``into`` (else where its count says); an unobserved one is dropped."""
        targets = observed_targets(sample)
        if not targets:
            return
        self._seen += 1
        first = targets[0]
        self._seen_by_target[first] += 1
        (into or self._split_for(self._seen_by_target[first])).keep(sample, targets)

    def add(self, samples: Sequence[AnySample]) -> AddResult:
        """Persist, then keep, every observed sample (all of them or, on a write error, none)."""
        with self._lock:
            seen_before = dict(self._seen_by_target)
            placed: dict[_Split, list[AnySample]] = {self._train: [], self._holdout: []}
            kept = dict.fromkeys(TARGETS, 0)
            unobserved = 0
            for sample in samples:
                targets = observed_targets(sample)
                if not targets:
                    unobserved += 1
                    continue
                first = targets[0]
                seen_before[first] += 1
                placed[self._split_for(seen_before[first])].append(sample)
                for target in targets:
                    kept[target] += 1
            for split, rows in placed.items():
                if rows:
                    split.append(b"".join(msgspec.json.encode(sample) + b"\n" for sample in rows), len(rows))
            for split, rows in placed.items():
                for sample in rows:
                    self._keep(sample, into=split)
                if split.lines_on_disk > 2 * split.budget * len(TARGETS):
                    split.rewrite()
        self._publish_counts()
        service_metrics().samples_received.inc(len(samples))
        return AddResult(accepted=len(samples), kept=kept, unobserved=unobserved)

    def flush(self, *, training: bool, holdout: bool) -> dict[str, dict[str, int]]:
        """Drop the kept training and/or held-out rows, on disk too; returns the rows dropped per target."""
        flushed = {"training": dict.fromkeys(TARGETS, 0), "holdout": dict.fromkeys(TARGETS, 0)}
        with self._lock:
            for wanted, name, split in (
                (training, "training", self._train),
                (holdout, "holdout", self._holdout),
            ):
                if wanted:
                    flushed[name] = split.clear()
                    split.rewrite()
        self._publish_counts()
        return flushed

    def capacity(self) -> int:
        """Most rows one target keeps for training (and as many held out)."""
        return self._train.budget

    @property
    def seen(self) -> int:
        """Observed rows accepted since the folder was first used (replayed ones included)."""
        return self._seen

    def counts(self) -> dict[str, int]:
        """How many rows each target holds for training and held out."""
        with self._lock:
            result = {f"{target}_training": self._train.sizes[target] for target in TARGETS}
            result |= {f"{target}_holdout": self._holdout.sizes[target] for target in TARGETS}
            return result

    def bucket_counts(self, *, holdout: bool = False) -> dict[str, dict[Regime, int]]:
        """Per target, the rows each regime holds."""
        split = self._holdout if holdout else self._train
        with self._lock:
            return {
                target: {regime: len(bucket) for regime, bucket in split.buckets[target].items() if bucket}
                for target in TARGETS
            }

    def training_set(self, *, holdout: bool = False, recent: bool = False) -> TrainingSet:
        """The kept rows (or the held-out ones), each target with its own.

        With ``recent``, only each target's last ``recent_rows`` rows of the split, in arrival order
        (after a restart, the order the files replay in).
        """
        split = self._holdout if holdout else self._train
        with self._lock:
            by_target = {
                target: list(split.recent[target]) if recent else split.samples(target) for target in TARGETS
            }
        return TrainingSet(
            {
                target: TargetRows(
                    feature_matrix(samples),
                    np.array([actual_ms(sample, target) for sample in samples], dtype=np.float64),
                )
                for target, samples in by_target.items()
            }
        )

    def _publish_counts(self) -> None:
        """``training_samples_count`` (llm-d's metric): rows per target and regime."""
        gauge = service_metrics().training_samples
        gauge.clear()
        for target, regimes in self.bucket_counts().items():
            for regime, count in regimes.items():
                queue, cache, prefix = regime
                gauge.labels(target, str(regime_index(regime)), str(queue), str(cache), str(prefix)).set(
                    count
                )
