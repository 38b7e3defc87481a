"""Observed latencies reported by the router, kept in bounded buckets and persisted.

A sample is a pod's metrics at scheduling time plus the TTFT and TPOT the request actually saw.
Samples are kept per *regime* — queue depth x KV-cache use x prefix-cache score — each regime a
bounded FIFO, so a flood from one regime (say, an idle cluster) cannot evict the others. Every
``holdout_every``-th sample goes to a held-out store of the same shape, for evaluating candidates.

Accepted samples are appended to ``samples.jsonl`` (fsynced) before the request is answered, and
replayed on start, so a restart loses none; the file is compacted to what the buckets hold once it
grows past twice their capacity.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np

from podlatency.schema import MAX_COUNT, PodFeatures, PodMetrics, feature_matrix
from podlatency.training import TrainingSet

Latency = Annotated[float, msgspec.Meta(ge=0.0, le=float(MAX_COUNT))]
MAX_SAMPLES_PER_REQUEST = 10_000
QUEUE_EDGES = (1, 4, 16)  # waiting: 0 | 1-3 | 4-15 | 16+
KV_EDGES = (0.5, 0.8)  # KV-cache use: < 0.5 | 0.5-0.8 | >= 0.8
PREFIX_EDGES = (1e-9, 0.5)  # prefix-cache score: 0 | (0, 0.5) | >= 0.5


class ObservedSample(PodMetrics, frozen=True, kw_only=True):
    """A pod's metrics and what the request actually took (llm-d's shape; unknown fields ignored)."""

    actual_ttft_ms: Latency
    actual_tpot_ms: Latency


class StrictObservedSample(PodFeatures, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The same, with unknown fields refused (our ``/v1`` API)."""

    actual_ttft_ms: Latency
    actual_tpot_ms: Latency


class SamplesRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/samples``."""

    samples: Annotated[
        list[StrictObservedSample], msgspec.Meta(min_length=1, max_length=MAX_SAMPLES_PER_REQUEST)
    ]


class TrainingDataBulkRequest(msgspec.Struct, frozen=True):
    """Body of llm-d's ``POST /add_training_data_bulk``."""

    entries: Annotated[list[ObservedSample], msgspec.Meta(min_length=1, max_length=MAX_SAMPLES_PER_REQUEST)]


Regime = tuple[int, int, int]
AnySample = ObservedSample | StrictObservedSample


def regime_of(sample: PodMetrics) -> Regime:
    """The bucket a sample belongs to."""
    return (
        sum(sample.num_request_waiting >= edge for edge in QUEUE_EDGES),
        sum(sample.kv_cache_percentage >= edge for edge in KV_EDGES),
        sum(sample.prefix_cache_score >= edge for edge in PREFIX_EDGES),
    )


class SampleStore:
    """Bounded, regime-balanced, persisted samples with a held-out slice."""

    def __init__(self, folder: Path, per_bucket: int = 2000, holdout_every: int = 10) -> None:
        self.path = folder / "samples.jsonl"
        self.per_bucket = per_bucket
        self.holdout_every = holdout_every
        self._lock = threading.Lock()
        self._train: dict[Regime, collections.deque[AnySample]] = {}
        self._holdout: dict[Regime, collections.deque[AnySample]] = {}
        self._seen = 0
        self._lines_on_disk = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._replay()

    def _replay(self) -> None:
        if not self.path.exists():
            return
        decoder = msgspec.json.Decoder(ObservedSample)
        for line in self.path.read_bytes().splitlines():
            if line.strip():
                self._keep(decoder.decode(line))
                self._lines_on_disk += 1

    def reload(self) -> None:
        """Forget what is held and replay the file (a trainer taking over a shared volume's samples)."""
        with self._lock:
            self._train.clear()
            self._holdout.clear()
            self._seen = 0
            self._lines_on_disk = 0
            self._replay()

    def _keep(self, sample: AnySample) -> None:
        self._seen += 1
        target = self._holdout if self._seen % self.holdout_every == 0 else self._train
        target.setdefault(regime_of(sample), collections.deque(maxlen=self.per_bucket)).append(sample)

    def add(self, samples: Sequence[AnySample]) -> int:
        """Persist, then keep, every sample (all of them or, on a write error, none)."""
        encoded = b"".join(msgspec.json.encode(sample) + b"\n" for sample in samples)
        with self._lock:
            with self.path.open("ab") as handle:
                handle.write(encoded)
                handle.flush()
                os.fsync(handle.fileno())
            self._lines_on_disk += len(samples)
            for sample in samples:
                self._keep(sample)
            if self._lines_on_disk > 2 * self.capacity():
                self._compact()
        return len(samples)

    def capacity(self) -> int:
        """Most samples the buckets hold (training and held out)."""
        regimes = (len(QUEUE_EDGES) + 1) * (len(KV_EDGES) + 1) * (len(PREFIX_EDGES) + 1)
        return 2 * regimes * self.per_bucket

    def _compact(self) -> None:
        kept = [
            sample for store in (self._train, self._holdout) for bucket in store.values() for sample in bucket
        ]
        staging = self.path.with_suffix(".jsonl.tmp")
        with staging.open("wb") as handle:
            handle.write(b"".join(msgspec.json.encode(sample) + b"\n" for sample in kept))
            handle.flush()
            os.fsync(handle.fileno())
        staging.replace(self.path)
        self._lines_on_disk = len(kept)

    @property
    def seen(self) -> int:
        """Samples accepted since the folder was first used (replayed ones included)."""
        return self._seen

    def counts(self) -> dict[str, int]:
        """How many samples are held for training and held out."""
        with self._lock:
            return {
                "training": sum(len(bucket) for bucket in self._train.values()),
                "holdout": sum(len(bucket) for bucket in self._holdout.values()),
                "regimes": len(self._train),
            }

    def training_set(self, *, holdout: bool = False) -> TrainingSet:
        """The kept samples as a training set (or the held-out ones)."""
        with self._lock:
            store = self._holdout if holdout else self._train
            samples = [sample for bucket in store.values() for sample in bucket]
        return TrainingSet(
            features=feature_matrix(samples),
            targets={
                "ttft": np.array([sample.actual_ttft_ms for sample in samples], dtype=np.float64),
                "tpot": np.array([sample.actual_tpot_ms for sample in samples], dtype=np.float64),
            },
        )
