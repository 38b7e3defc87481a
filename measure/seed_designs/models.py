"""The seed designs' prediction path: the seed post's, reproduced for the load comparison (not for serving).

The post predicted one pod at a time: a one-row pandas DataFrame, then the model's predict. Here the
model's predict is ``Booster.predict`` on a DMatrix built from that DataFrame, the path XGBoost's
scikit-learn wrapper took (without pulling in scikit-learn). Its batch design builds one DataFrame
for all pods and predicts once per target. Both use the same boosters as ``/v1/predict``, with the
same ``nthread``, so the comparison measures the designs and nothing else.

Each per-pod call also reports when it started and ended on its thread, so the caller can record how
long the pod waited in its executor queue: the time the post's timers never saw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
import xgboost as xgb
from litestar.di import Provide

from podlatency.engines.predictor import LoadedModel
from podlatency.schema import FEATURE_NAMES, TARGETS, PodMetrics, feature_matrix


@dataclass(frozen=True, slots=True)
class PodResult:
    """One pod's predictions and when its work ran (``time.time_ns`` clock)."""

    ttft_ms: float
    tpot_ms: float
    started_ns: int
    ended_ns: int


def feature_dict(row: PodMetrics) -> dict[str, float]:
    """One pod as the dict the post handed to ``pd.DataFrame([input_data])``."""
    return dict(zip(FEATURE_NAMES, feature_matrix([row])[0].tolist(), strict=True))


class SeedModel:
    """The post's per-row and per-batch predict over one model version."""

    def __init__(self, model: LoadedModel, nthread: int) -> None:
        self.version = model.version
        # The model's own columns (a bundle trained before some features existed knows fewer) and calibration.
        self._columns = list(model.bundle.feature_names)
        self._bundle = model.bundle  # its load trend and calibration, applied as /v1/predict does
        self._boosters = {target: booster.copy() for target, booster in model.bundle.boosters.items()}
        for booster in self._boosters.values():
            booster.set_param({"nthread": nthread})

    def predict_one(self, features: dict[str, float]) -> PodResult:
        """The post's ``process_prediction``: a one-row DataFrame, then predict, per target."""
        started_ns = time.time_ns()
        frame = pd.DataFrame([features], columns=self._columns)
        values = frame.to_numpy(np.float32)
        ttft, tpot = (
            float(
                self._bundle.latencies(
                    target, self._boosters[target].predict(xgb.DMatrix(frame), output_margin=True), values
                )[0]
            )
            for target in TARGETS
        )
        return PodResult(ttft, tpot, started_ns, time.time_ns())

    def frame(self, rows: Sequence[dict[str, float]]) -> SeedFrame:
        """The post's batch design, first half: one DataFrame for all pods (as a DMatrix)."""
        frame = pd.DataFrame(list(rows), columns=self._columns)
        return SeedFrame(xgb.DMatrix(frame), frame.to_numpy(np.float32))

    def predict_frame(self, target: str, frame: SeedFrame) -> npt.NDArray[np.float64]:
        """The post's batch design, second half: one predict per target."""
        return self._bundle.latencies(
            target, self._boosters[target].predict(frame.dmatrix, output_margin=True), frame.values
        )


@dataclass(frozen=True, slots=True)
class SeedFrame:
    """The batch design's DataFrame as XGBoost's DMatrix, and its values for the load trend."""

    dmatrix: xgb.DMatrix
    values: npt.NDArray[np.float32]


class SeedModels:
    """The :class:`SeedModel` of whichever version is in service, rebuilt when it changes."""

    def __init__(self, nthread: int) -> None:
        self._nthread = nthread
        self._current: SeedModel | None = None
        self._lock = threading.Lock()

    def for_model(self, model: LoadedModel) -> SeedModel:
        """The seed model for ``model``'s version."""
        current = self._current
        if current is not None and current.version == model.version:
            return current
        with self._lock:
            if self._current is None or self._current.version != model.version:
                self._current = SeedModel(model, self._nthread)
            return self._current


DEDICATED_POOL_WORKERS = 16
"""Threads of the dedicated-pool design's long-lived pool (the post's solution 2)."""


class SeedDesigns:
    """What the seed design routes share: the post's models of the version served, and the dedicated pool."""

    def __init__(self, nthread: int) -> None:
        self.models = SeedModels(nthread)
        self.dedicated_pool = ThreadPoolExecutor(DEDICATED_POOL_WORKERS, thread_name_prefix="seed-dedicated-")

    def close(self) -> None:
        """Let the dedicated pool finish its work and end its threads."""
        self.dedicated_pool.shutdown(wait=True)


def provide(designs: SeedDesigns) -> Provide:
    """``designs`` as the routes' ``seed_designs`` dependency (its annotation resolves in this module)."""

    def seed_designs() -> SeedDesigns:
        return designs

    return Provide(seed_designs, use_cache=True, sync_to_thread=False)
