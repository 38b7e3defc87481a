"""Batched prediction: one float32 matrix, one predict call per target, on CPU or GPU.

Three engines: compiled trees on the CPU (:mod:`podlatency.engines.compiled`, once a model's compile has
been checked), else XGBoost's ``inplace_predict`` on the CPU, and XGBoost on the GPU for calls big
enough to pay for it. ``inplace_predict`` skips the DMatrix that ``predict`` builds per call; on a
float32 C-contiguous numpy matrix it reads the rows where they are. On ``cuda`` the matrix is copied
to the device first (with cupy when it is installed) so XGBoost does not fall back to a DMatrix on
the host.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from podlatency.bundle import ModelBundle
from podlatency.engines.batching import MicroBatcher
from podlatency.engines.compiled import (
    ENGINE_COMPILED,
    ENGINE_XGBOOST,
    ENGINE_XGBOOST_GPU,
    CompiledModel,
    check_matrix,
    per_row,
)
from podlatency.errors import DeviceUnavailable, ModelNotReady
from podlatency.margins import as_latencies, trend_of
from podlatency.schema import FEATURE_NAMES

logger = logging.getLogger(__name__)

FloatMatrix = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]


@functools.cache
def cuda_usable() -> bool:
    """Whether this XGBoost build can predict on a visible GPU (probed once per process)."""
    if not xgb.build_info().get("USE_CUDA"):
        return False
    probe_rows = np.zeros((4, 2), dtype=np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            booster = xgb.train(
                {"device": "cuda", "tree_method": "hist", "nthread": 1},
                xgb.DMatrix(probe_rows, label=np.zeros(4)),
                num_boost_round=1,
            )
            booster.inplace_predict(probe_rows)
        except xgb.core.XGBoostError:
            return False
    # Without a GPU XGBoost warns and quietly runs on the CPU instead.
    return not any("GPU" in str(warning.message) for warning in caught)


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when usable, else ``cpu``; ``cuda`` without a GPU is an error."""
    if requested == "cpu":
        return "cpu"
    usable = cuda_usable()
    if requested == "cuda" and not usable:
        raise DeviceUnavailable("PODLATENCY_DEVICE=cuda, but XGBoost sees no usable GPU on this machine")
    return "cuda" if usable else "cpu"


def _cupy() -> Any | None:
    try:
        import cupy  # noqa: PLC0415  (optional: only on GPU nodes)
    except ImportError:
        return None
    return cupy


class Predictor:
    """Predicts every target of one bundle, on the CPU or (for big enough batches) the GPU.

    With ``device="cuda"``, a call of at least ``gpu_min_rows`` rows runs on the GPU, with its input
    copied to the device (cupy when installed); a smaller one runs on the CPU copy of the boosters,
    where a launch and two copies would cost more than the prediction. ``python -m measure.gpu_bench``
    measures the crossover on a given GPU.
    """

    def __init__(self, bundle: ModelBundle, device: str, nthread: int, gpu_min_rows: int = 0) -> None:
        self.bundle = bundle
        self.device = device
        self.nthread = nthread
        self.gpu_min_rows = gpu_min_rows
        # A bundle trained without some of today's features sees only the columns it knows.
        self._columns = (
            None
            if bundle.feature_names == FEATURE_NAMES
            else [FEATURE_NAMES.index(name) for name in bundle.feature_names]
        )
        self._scale = bundle.prediction_scale
        self._trend = bundle.trend_matrix()
        self._trend_column = {target: index for index, target in enumerate(bundle.boosters)}
        # Private copies: device and thread settings are per predictor, the bundle stays untouched.
        self._boosters = {"cpu": self._copies("cpu")}
        if device == "cuda":
            self._boosters["cuda"] = self._copies("cuda")
        self._cupy = _cupy() if device == "cuda" else None
        self._compiled: CompiledModel | None = None

    def use_compiled(self, compiled: CompiledModel) -> None:
        """Predict CPU calls with compiled trees from now on (calls in flight finish on XGBoost)."""
        self._compiled = compiled

    def engine_for(self, rows: int) -> str:
        """Which engine predicts a call of ``rows`` rows."""
        if self.device_for(rows) == "cuda":
            return ENGINE_XGBOOST_GPU
        return ENGINE_COMPILED if self._compiled is not None else ENGINE_XGBOOST

    def engines(self) -> dict[str, int]:
        """Each engine in use and the fewest rows it predicts (the GPU takes calls from ``gpu_min_rows``)."""
        engines = {self.engine_for(1): 1}
        if "cuda" in self._boosters and self.gpu_min_rows > 1:
            engines[ENGINE_XGBOOST_GPU] = self.gpu_min_rows
        return engines

    def compiled_and_xgboost(
        self, compiled: CompiledModel, *, rows_per_call: int | None = None
    ) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, npt.NDArray[np.float32]]]:
        """Raw outputs of ``compiled`` and of XGBoost on the CPU, on the same check matrix.

        With ``rows_per_call``, ``compiled`` predicts the matrix in calls of that many rows (the way a
        router's few rows take); else in one call.
        """
        matrix = check_matrix(self.bundle.boosters, self._columns)
        step = rows_per_call or len(matrix)
        calls = [
            compiled.predict_timed(matrix[start : start + step])[0] for start in range(0, len(matrix), step)
        ]
        candidate = {target: np.concatenate([call[target] for call in calls]) for target in calls[0]}
        reference = {
            target: per_row(
                booster.inplace_predict(matrix, validate_features=False, predict_type="margin"), len(matrix)
            )
            for target, booster in self._boosters["cpu"].items()
        }
        return candidate, reference

    def _copies(self, device: str) -> dict[str, xgb.Booster]:
        copies = {target: booster.copy() for target, booster in self.bundle.boosters.items()}
        for booster in copies.values():
            booster.set_param({"device": device, "nthread": self.nthread})
        return copies

    @property
    def targets(self) -> tuple[str, ...]:
        """Target names in prediction order."""
        return tuple(self.bundle.boosters)

    def device_for(self, rows: int) -> str:
        """Where a call of ``rows`` rows runs."""
        return "cuda" if "cuda" in self._boosters and rows >= self.gpu_min_rows else "cpu"

    def _on_device(self, matrix: FloatMatrix, device: str) -> Any:
        if device == "cuda" and self._cupy is not None:
            return self._cupy.asarray(matrix)
        return matrix

    def _predict(
        self, target: str, trend: FloatArray | None, on_device: Any, device: str
    ) -> npt.NDArray[np.float64]:
        booster = self._boosters[device][target]
        result = booster.inplace_predict(on_device, validate_features=False, predict_type="margin")
        if device == "cuda" and self._cupy is not None:
            result = self._cupy.asnumpy(result)
        return self._finish(target, result, trend)

    def _trend_values(self, columns: FloatMatrix) -> FloatArray | None:
        """Every target's load trend on the rows, a column each (``None`` for a bundle without one)."""
        return None if self._trend is None else trend_of(columns, self._trend)

    def _finish(self, target: str, raw: Any, trend: FloatArray | None) -> npt.NDArray[np.float64]:
        """A booster's raw output as latencies, given :meth:`_trend_values` for the same rows."""
        shift = None if trend is None else trend[:, self._trend_column[target]]
        return as_latencies(raw, shift, self._scale.get(target), log_latency=self.bundle.log_latency)

    def _model_columns(self, matrix: FloatMatrix) -> FloatMatrix:
        return matrix if self._columns is None else np.ascontiguousarray(matrix[:, self._columns])

    def predict_target(self, target: str, matrix: FloatMatrix) -> npt.NDArray[np.float64]:
        """One XGBoost ``inplace_predict`` call for all rows, at the primary quantile (evaluation, bench)."""
        return primary(self.predict_quantiles(target, matrix), self.bundle.primary_output)

    def predict_quantiles(self, target: str, matrix: FloatMatrix) -> npt.NDArray[np.float64]:
        """Like :meth:`predict_target`, with every quantile of a set (a column each)."""
        device = self.device_for(len(matrix))
        columns = self._model_columns(matrix)
        return self._predict(target, self._trend_values(columns), self._on_device(columns, device), device)

    def predict_timed(
        self, matrix: FloatMatrix
    ) -> tuple[dict[str, npt.NDArray[np.float64]], dict[str, tuple[int, int]]]:
        """Every target for the same rows (copied to the device once), with each call's (start_ns, end_ns).

        A set of quantiles gives a row of them per row, ascending (:func:`primary` takes the primary's).
        """
        device = self.device_for(len(matrix))
        compiled = self._compiled  # read once: a switch lands between calls, never inside one
        columns = self._model_columns(matrix)
        trend = self._trend_values(columns)
        if compiled is not None and device == "cpu":
            raw, compiled_times = compiled.predict_timed(columns)
            return {
                target: self._finish(target, raw[target], trend) for target in self.targets
            }, compiled_times
        on_device = self._on_device(columns, device)
        by_target: dict[str, npt.NDArray[np.float64]] = {}
        times: dict[str, tuple[int, int]] = {}
        for target in self.targets:
            started_ns = time.time_ns()
            by_target[target] = self._predict(target, trend, on_device, device)
            times[target] = (started_ns, time.time_ns())
        return by_target, times

    def predict_all(self, matrix: FloatMatrix) -> dict[str, npt.NDArray[np.float64]]:
        """Every target for the same rows, at the primary quantile (used by tests and the benchmark)."""
        output = self.bundle.primary_output
        return {target: primary(values, output) for target, values in self.predict_timed(matrix)[0].items()}

    def warm_up(self) -> None:
        """Run predictions on every device in use, so the first request pays no lazy initialisation."""
        self.predict_all(np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32))
        if "cuda" in self._boosters:
            self.predict_all(np.zeros((max(self.gpu_min_rows, 1), len(FEATURE_NAMES)), dtype=np.float32))


def primary(values: npt.NDArray[np.float64], output: int | None) -> npt.NDArray[np.float64]:
    """A target's predictions at the primary quantile: its column ``output`` of a set (``None``: all)."""
    return values if output is None else values[:, output]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A bundle ready to serve, and when it was loaded.

    ``reported_quantile`` is what llm-d's API reports as ``quantile``: the model's for a quantile
    model, else the configured ``PODLATENCY_QUANTILE_ALPHA`` (llm-d reports it for mean models too).
    """

    predictor: Predictor
    batcher: MicroBatcher | None = None
    reported_quantile: float = 0.9
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def bundle(self) -> ModelBundle:
        """The bundle being served."""
        return self.predictor.bundle

    @property
    def version(self) -> str:
        """The bundle's content-hash version."""
        return self.predictor.bundle.version


class ModelHolder:
    """The model a process serves: read without locks, swapped whole."""

    def __init__(self) -> None:
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self.not_ready_reason = "model is loading"

    def current(self) -> LoadedModel:
        """The model in service; :class:`ModelNotReady` while there is none."""
        current = self._current
        if current is None:
            raise ModelNotReady(self.not_ready_reason)
        return current

    def current_or_none(self) -> LoadedModel | None:
        """The model in service, or ``None`` while there is none (one read, no race with a swap)."""
        return self._current

    @property
    def ready(self) -> bool:
        """Whether a model is loaded."""
        return self._current is not None

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Put ``model`` in service; returns the one it replaced."""
        with self._swap_lock:
            previous, self._current = self._current, model
        return previous

    def mark_unavailable(self, reason: str) -> None:
        """Record why no model could be loaded (shown by readiness)."""
        self.not_ready_reason = reason
