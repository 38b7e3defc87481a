"""Compiled trees: each target's booster as native code (treelite + tl2cgen), for calls on the CPU.

tl2cgen writes each tree as nested ``if``s with the thresholds as constants, and gcc turns them into
straight-line branches (why that is faster for a few rows: docs/architecture.md, "Predict engines").
This module is the engine: a loaded compiled model (:class:`CompiledModel`), and the check a compile
must pass before it serves (:func:`check_matrix`, :func:`outputs_agree`). :mod:`podlatency.engines.compiling`
compiles, caches and switches.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import platform
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import numpy.typing as npt

from podlatency.engines.flat_trees import FlatTrees
from podlatency.errors import PodlatencyError
from podlatency.schema import FEATURE_NAMES, MAX_COUNT, POD_TYPE_CODES, add_derived_columns

if TYPE_CHECKING:
    import xgboost as xgb

logger = logging.getLogger(__name__)

ENGINE_COMPILED = "compiled"
ENGINE_XGBOOST = "xgboost"
ENGINE_XGBOOST_GPU = "xgboost-gpu"

# Float32 sums of the same leaves in another order: |compiled - xgboost| <= ABS + REL * |xgboost|.
ABSOLUTE_TOLERANCE = 1e-3
RELATIVE_TOLERANCE = 1e-5

FloatMatrix = npt.NDArray[np.float32]


def platform_key() -> str:
    """What a compiled library is only valid for: OS, CPU architecture and the tl2cgen runtime."""
    return f"{sys.platform}-{platform.machine()}-tl2cgen{importlib.metadata.version('tl2cgen')}"


HELD_GIL_MAX_ROWS = 512
"""Calls up to this many rows keep the GIL (microseconds); bigger ones release it while they run."""


class CompiledModel:
    """One bundle's boosters as loaded native libraries: raw outputs (margins, before any link) per target.

    A booster with one output gives one value per row; one with several (a set of quantiles whose
    trees carry them all in each leaf) gives a ``(rows, outputs)`` array.

    With ``flat`` (the same trees as flat arrays, :mod:`podlatency.engines.flat_trees`) every call
    walks those: their few hundred KB stay closer to the core between a router's requests than
    tl2cgen's code does. tl2cgen's libraries serve a model whose trees the arrays cannot hold. Calls
    up to :data:`HELD_GIL_MAX_ROWS` rows keep the GIL: releasing it and taking it back, in a busy
    server, means waiting for the event loop; tl2cgen's small calls go straight to its C API
    (``include/tl2cgen/c_api.h``) through a binding that keeps the GIL for that reason. Bigger calls
    release it, so the event loop runs meanwhile.
    """

    def __init__(self, libraries: Mapping[str, Path], flat: FlatTrees | None = None) -> None:
        import tl2cgen  # noqa: PLC0415  (only where a compiled model is loaded)
        from tl2cgen.libloader import _LIB  # noqa: PLC0415  (the runtime tl2cgen loaded)

        self._dmatrix = tl2cgen.DMatrix
        self._predictors = {
            target: tl2cgen.Predictor(str(path), nthread=1) for target, path in libraries.items()
        }
        self._outputs: dict[str, int] = {}
        for target, predictor in self._predictors.items():
            # The binding below writes one float per row and output: outputs are targets of one class.
            if any(classes != 1 for classes in predictor.num_class):
                raise ValueError(f"{target}: a compiled model must have one value per output, not classes")
            self._outputs[target] = int(predictor.num_target)
        # tl2cgen allows one predict call at a time per library; the batcher makes one at a time anyway.
        self._lock = threading.Lock()
        held = ctypes.PyDLL(_LIB._name)  # the same library, called without releasing the GIL
        self._create = held.TL2cgenDMatrixCreateFromMat
        self._create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64,
                                 ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]  # fmt: skip
        self._predict_batch = held.TL2cgenPredictorPredictBatch
        self._predict_batch.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self._free = held.TL2cgenDMatrixFree
        self._free.argtypes = [ctypes.c_void_p]
        self._missing = np.array([np.nan], dtype=np.float32)  # rows never hold NaN; tl2cgen wants a value
        self._flat = flat

    @property
    def targets(self) -> tuple[str, ...]:
        """Target names, in prediction order."""
        return tuple(self._predictors)

    def predict_timed(
        self, matrix: FloatMatrix
    ) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, tuple[int, int]]]:
        """Every target's raw output for the rows, with each call's (start_ns, end_ns).

        The matrix is handed to the libraries once; that hand-over is timed with the first target.
        """
        with self._lock:
            started_ns = time.time_ns()
            flat = self._flat
            if flat is not None:
                rows = np.ascontiguousarray(matrix, dtype=np.float32)
                keep_gil = len(matrix) <= HELD_GIL_MAX_ROWS
                return self._each_target(
                    started_ns, lambda target, _: flat.outputs(target, rows, keep_gil=keep_gil)
                )
            if len(matrix) > HELD_GIL_MAX_ROWS:
                dmatrix = self._dmatrix(matrix, dtype="float32")
                return self._each_target(
                    started_ns,
                    lambda _, predictor: per_row(predictor.predict(dmatrix, pred_margin=True), len(matrix)),
                )
            rows = np.ascontiguousarray(matrix, dtype=np.float32)
            handle = ctypes.c_void_p()
            _checked(self._create(rows.ctypes.data, b"float32", rows.shape[0], rows.shape[1],
                                  self._missing.ctypes.data, ctypes.byref(handle)))  # fmt: skip
            try:
                return self._each_target(
                    started_ns,
                    lambda target, predictor: self._held(
                        predictor, handle, len(matrix), self._outputs[target]
                    ),
                )
            finally:
                self._free(handle)

    def _held(
        self, predictor: Any, handle: ctypes.c_void_p, rows: int, outputs: int
    ) -> npt.NDArray[np.float32]:
        """One target's outputs through the GIL-keeping binding: a value per row and output, margins."""
        out = np.zeros(rows * outputs, dtype=np.float32)
        _checked(self._predict_batch(predictor.handle, handle, 0, 1, out.ctypes.data))
        return out if outputs == 1 else out.reshape(rows, outputs)

    def _each_target(
        self, started_ns: int, predict: Callable[[str, Any], npt.NDArray[np.float32]]
    ) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, tuple[int, int]]]:
        """``predict`` for every target in turn, each call timed from the end of the one before."""
        by_target: dict[str, npt.NDArray[np.float32]] = {}
        times: dict[str, tuple[int, int]] = {}
        for target, predictor in self._predictors.items():
            by_target[target] = predict(target, predictor)
            ended_ns = time.time_ns()
            times[target] = (started_ns, ended_ns)
            started_ns = ended_ns
        return by_target, times


def per_row(values: npt.NDArray[np.float32], rows: int) -> npt.NDArray[np.float32]:
    """tl2cgen's ``(rows, outputs, 1)`` values as one per row, or ``(rows, outputs)`` for several."""
    shaped = np.asarray(values).reshape(rows, -1)
    return shaped[:, 0] if shaped.shape[1] == 1 else shaped


def _checked(status: int) -> None:
    """tl2cgen's C API answers -1 on failure (a fault: the request gets a 500)."""
    if status != 0:
        raise PodlatencyError("tl2cgen could not predict with a compiled model")


def check_matrix(
    boosters: Mapping[str, xgb.Booster], columns: list[int] | None, seed: int = 0
) -> FloatMatrix:
    """Rows on which compiled and XGBoost outputs must agree, in the model's columns.

    Random rows over each feature's whole range, zeros, every feature at its largest value, and rows
    that put a feature exactly on each split threshold (and one float32 step either side), where a
    different comparison would show.
    """
    rng = np.random.default_rng(seed)
    fraction = {FEATURE_NAMES.index("kv_cache_percentage"), FEATURE_NAMES.index("prefix_cache_score")}
    pod_type = FEATURE_NAMES.index("pod_type_code")
    raw = len(FEATURE_NAMES) - 2  # the derived token and encoder columns are computed
    random_rows = np.empty((512, len(FEATURE_NAMES)), dtype=np.float32)
    for column in range(raw):
        if column in fraction:
            random_rows[:, column] = rng.uniform(0.0, 1.0, 512)
        elif column == pod_type:
            random_rows[:, column] = rng.choice(sorted(set(POD_TYPE_CODES.values())), 512)
        else:  # counts from 0 to a billion, most of them small
            random_rows[:, column] = np.floor(np.exp(rng.uniform(0.0, np.log(MAX_COUNT + 1.0), 512)) - 1.0)
    largest = np.array([[1.0 if c in fraction else 2.0 if c == pod_type else MAX_COUNT for c in range(raw)]])
    full = np.zeros((514, len(FEATURE_NAMES)), dtype=np.float32)
    full[:512] = random_rows
    full[513, :raw] = largest
    # Encoder items matched never exceed the items sent (the schema refuses it).
    encoder_in, encoder_matched = (
        FEATURE_NAMES.index("encoder_input_size"),
        FEATURE_NAMES.index("encoder_matched_size"),
    )
    full[:, encoder_matched] = np.minimum(full[:, encoder_matched], full[:, encoder_in])
    add_derived_columns(full)
    model_rows = full if columns is None else np.ascontiguousarray(full[:, columns])
    on_thresholds = [model_rows]
    for booster in boosters.values():
        on_thresholds.append(_threshold_rows(booster, model_rows[:512], rng))
    return np.ascontiguousarray(np.concatenate(on_thresholds), dtype=np.float32)


class _Tree(msgspec.Struct):
    """The parts of one tree in XGBoost's JSON model that say where it splits (leaves have no left child)."""

    left_children: list[int]
    split_indices: list[int]
    split_conditions: list[float]


class _Trees(msgspec.Struct):
    trees: list[_Tree]


class _GradientBooster(msgspec.Struct):
    model: _Trees


class _Learner(msgspec.Struct):
    gradient_booster: _GradientBooster


class _ModelDump(msgspec.Struct):
    learner: _Learner


def _threshold_rows(booster: xgb.Booster, base: FloatMatrix, rng: np.random.Generator) -> FloatMatrix:
    """Rows with one feature set to a split threshold, and to the float32 values either side of it.

    This runs in the serving process while requests are answered, holding the interpreter lock, so it
    reads only the split fields of the model's JSON and works on arrays (milliseconds, not 100 ms).
    """
    dump = msgspec.json.decode(booster.save_raw("json"), type=_ModelDump)
    trees = dump.learner.gradient_booster.model.trees
    features, thresholds = [], []
    for tree in trees:
        inner = np.asarray(tree.left_children) != -1
        features.append(np.asarray(tree.split_indices)[inner])
        thresholds.append(np.asarray(tree.split_conditions, dtype=np.float64)[inner])
    # Each distinct (feature, threshold) once, ordered by feature, then threshold.
    all_columns, all_thresholds = np.concatenate(features), np.concatenate(thresholds)
    order = np.lexsort((all_thresholds, all_columns))
    all_columns, all_thresholds = all_columns[order], all_thresholds[order]
    distinct = np.ones(len(order), dtype=bool)
    distinct[1:] = (np.diff(all_columns) != 0) | (np.diff(all_thresholds) != 0)
    columns, split_values = all_columns[distinct].astype(np.intp), all_thresholds[distinct]
    if len(columns) > 2048:
        chosen = np.sort(rng.choice(len(columns), 2048, replace=False))
        columns, split_values = columns[chosen], split_values[chosen]
    rows = base[rng.integers(0, len(base), 3 * len(columns))].copy()
    values = split_values.astype(np.float32)
    for offset, nudged in enumerate(
        (values, np.nextafter(values, np.float32(-np.inf)), np.nextafter(values, np.float32(np.inf)))
    ):
        rows[np.arange(offset, len(rows), 3), columns] = nudged
    return rows


def outputs_agree(
    compiled: Mapping[str, npt.NDArray[np.float32]], reference: Mapping[str, npt.NDArray[np.float32]]
) -> str | None:
    """``None`` when every target agrees within float32 tolerance, else what differs."""
    for target, expected in reference.items():
        actual = compiled[target]
        allowed = ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE * np.abs(expected)
        difference = np.abs(actual.astype(np.float64) - expected)
        if actual.shape != expected.shape or not np.all(difference <= allowed):
            worst = int(np.argmax(difference - allowed)) if actual.shape == expected.shape else -1
            return (
                f"{target}: compiled output differs from XGBoost's "
                f"(row {worst}: {actual.reshape(-1)[worst]!r} against {expected.reshape(-1)[worst]!r})"
            )
    return None
