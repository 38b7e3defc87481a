"""Trees as flat arrays, walked without branches: how the compiled engine predicts.

tl2cgen turns every tree into code (about 370 KB per target for the embedded default). A router's
request predicts a few rows; between two requests the rest of the request pushes that code out of the
core's caches, so each request fetches it again and the branch predictors guess each split anew
(docs/performance.md, "Against the floor"). Here the same trees are arrays: each tree padded to a
complete tree of the model's depth, a split feature and threshold per inner node and the leaf values,
about 150 KB per target. A row's walk is ``depth`` steps of ``i = 2 i + 1 + (x[feature[i]] >= threshold[i])``,
a comparison turned into an index with no branch to mispredict, over rows of the call taken
level by level so their walks overlap. One small evaluator (:data:`EVALUATOR_SOURCE`, compiled once
per model by the compile child) serves every model. A row's outputs do not depend on the other rows
of its call, so a request's answer is the same alone or batched.

XGBoost sends a row left when its value is below the split's threshold; a padded node (a leaf above
the model's depth) has every leaf under it hold the leaf's value. Rows never hold NaN (the schema
refuses them), so XGBoost's default direction for missing values never applies. Outputs are margins,
as tl2cgen's are: the trees' sum plus the model's base margin, which is taken from XGBoost itself.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import xgboost as xgb

EVALUATOR_LIBRARY = "flat_trees.so"
MAX_DEPTH = 12
"""Deeper trees are not padded (4,096 leaves each): their model serves with tl2cgen alone."""

EVALUATOR_SOURCE = r"""
#include <stdint.h>
#define CHUNK 16
/* Adds every tree's leaf values to out (rows x outputs, holding the base margin): trees are complete
   to `depth`, inner node i's children are 2i+1 (below the threshold) and 2i+2. */
void flat_trees_predict(const float* rows, int64_t n_rows, int64_t n_columns, const int32_t* features,
                        const float* thresholds, const float* leaves, int64_t n_trees, int32_t depth,
                        int32_t n_outputs, float* out) {
  const int64_t inner = ((int64_t)1 << depth) - 1, n_leaves = (int64_t)1 << depth;
  for (int64_t first = 0; first < n_rows; first += CHUNK) {
    const int64_t count = n_rows - first < CHUNK ? n_rows - first : CHUNK;
    const float* x = rows + first * n_columns;
    float* o = out + first * n_outputs;
    for (int64_t t = 0; t < n_trees; ++t) {
      const int32_t* feature = features + t * inner;
      const float* threshold = thresholds + t * inner;
      const float* leaf = leaves + t * n_leaves * n_outputs;
      int64_t node[CHUNK];
      for (int64_t r = 0; r < count; ++r) node[r] = 0;
      for (int32_t level = 0; level < depth; ++level)
        for (int64_t r = 0; r < count; ++r) {
          const int64_t i = node[r];
          node[r] = 2 * i + 1 + (x[r * n_columns + feature[i]] >= threshold[i]);
        }
      for (int64_t r = 0; r < count; ++r) {
        const float* value = leaf + (node[r] - inner) * n_outputs;
        for (int32_t k = 0; k < n_outputs; ++k) o[r * n_outputs + k] += value[k];
      }
    }
  }
}
"""


def build_evaluator(library: Path, compiler: str) -> None:
    """Compile :data:`EVALUATOR_SOURCE` to the shared library ``library`` (in the compile child)."""
    source = library.with_suffix(".c")
    source.write_text(EVALUATOR_SOURCE)
    command = [compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)]
    subprocess.run(command, check=True, capture_output=True)  # noqa: S603  (the configured compiler)
    source.unlink()


@dataclass(frozen=True)
class FlatTree:
    """One booster's trees as arrays, complete to ``depth``: what :data:`EVALUATOR_SOURCE` walks."""

    features: npt.NDArray[np.int32]
    """(trees, 2**depth - 1): each inner node's split feature."""
    thresholds: npt.NDArray[np.float32]
    """(trees, 2**depth - 1): a row goes to the right child when its value is at least this."""
    leaves: npt.NDArray[np.float32]
    """(trees, 2**depth, outputs): each leaf's values."""
    depth: int
    base_margin: npt.NDArray[np.float32]
    """(outputs,): added to the trees' sum, as XGBoost adds its base score."""

    @classmethod
    def of(cls, booster: xgb.Booster) -> FlatTree | None:
        """The booster's trees as arrays; ``None`` for trees they cannot hold (see the comments below)."""
        model = json.loads(bytes(booster.save_raw("json")))
        forest = model["learner"]["gradient_booster"]["model"]
        trees: list[dict[str, Any]] = forest["trees"]
        # Categorical splits, or trees that each serve one of several outputs (a tree per output,
        # where vector leaves hold every output in one tree): not what the arrays hold.
        if not trees or any(any(tree.get("split_type", [])) for tree in trees) or any(forest["tree_info"]):
            return None
        outputs = max(1, int(trees[0]["tree_param"].get("size_leaf_vector", "1")))
        depth = max(_depth(tree) for tree in trees)
        if depth > MAX_DEPTH:
            return None
        inner = 2**depth - 1
        features = np.zeros((len(trees), inner), dtype=np.int32)
        thresholds = np.full((len(trees), inner), np.inf, dtype=np.float32)
        leaves = np.zeros((len(trees), 2**depth, outputs), dtype=np.float32)
        for index, tree in enumerate(trees):
            _lay_out(
                tree,
                outputs=outputs,
                depth=depth,
                features=features[index],
                thresholds=thresholds[index],
                leaves=leaves[index],
            )
        zeros = np.zeros((1, booster.num_features()), dtype=np.float32)
        margin = np.asarray(booster.inplace_predict(zeros, validate_features=False, predict_type="margin"))
        base = margin.reshape(-1).astype(np.float64) - _leaf_sum(
            features, thresholds, leaves, depth, zeros[0]
        )
        return cls(features, thresholds, leaves, depth, base.astype(np.float32))


def _leaf_sum(
    features: npt.NDArray[np.int32],
    thresholds: npt.NDArray[np.float32],
    leaves: npt.NDArray[np.float32],
    depth: int,
    row: npt.NDArray[np.float32],
) -> npt.NDArray[np.float64]:
    """The trees' leaf values summed for one row, walked in numpy (what the evaluator adds to the base)."""
    trees = np.arange(len(features))
    node = np.zeros(len(features), dtype=np.int64)
    for _ in range(depth):
        node = 2 * node + 1 + (row[features[trees, node]] >= thresholds[trees, node])
    values: npt.NDArray[np.float64] = leaves[trees, node - (2**depth - 1)].astype(np.float64).sum(axis=0)
    return values


def _depth(tree: Mapping[str, Any], node: int = 0) -> int:
    left, right = tree["left_children"][node], tree["right_children"][node]
    return 0 if left == -1 else 1 + max(_depth(tree, left), _depth(tree, right))


def _lay_out(
    tree: Mapping[str, Any],
    *,
    outputs: int,
    depth: int,
    features: npt.NDArray[np.int32],
    thresholds: npt.NDArray[np.float32],
    leaves: npt.NDArray[np.float32],
) -> None:
    """Put one XGBoost tree (its JSON form) into complete-tree slots: node ``i``'s children at 2i+1, 2i+2."""
    left, right = tree["left_children"], tree["right_children"]
    inner = 2**depth - 1
    pending = [(0, 0, 0)]  # (XGBoost node, slot, level)
    while pending:
        node, slot, level = pending.pop()
        if left[node] == -1:
            # A leaf: its value (split_conditions holds a scalar leaf's, base_weights a vector leaf's)
            # fills every leaf slot under this one.
            if outputs == 1:
                value = [tree["split_conditions"][node]]
            else:
                value = tree["base_weights"][node * outputs : (node + 1) * outputs]
            first, span = slot, 1
            for _ in range(depth - level):
                first, span = 2 * first + 1, 2 * span
            leaves[first - inner : first - inner + span] = value
            continue
        features[slot] = tree["split_indices"][node]
        thresholds[slot] = tree["split_conditions"][node]
        pending += [(left[node], 2 * slot + 1, level + 1), (right[node], 2 * slot + 2, level + 1)]


class FlatTrees:
    """A model's targets as :class:`FlatTree` arrays, walked by the compiled evaluator."""

    def __init__(self, library: Path, trees: Mapping[str, FlatTree]) -> None:
        # The same function twice: called keeping the GIL (a few rows: microseconds, and taking the GIL
        # back would wait for the event loop) and releasing it (a big call lets the loop run meanwhile).
        self._keeping_gil = ctypes.PyDLL(str(library)).flat_trees_predict
        self._releasing_gil = ctypes.CDLL(str(library)).flat_trees_predict
        for function in (self._keeping_gil, self._releasing_gil):
            function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32,
                                 ctypes.c_int32, ctypes.c_void_p]  # fmt: skip
            function.restype = None
        self._trees = dict(trees)
        # The arrays' addresses, read once: numpy's ctypes accessor costs about a microsecond a read.
        self._arguments = {
            target: (
                tree.features.ctypes.data,
                tree.thresholds.ctypes.data,
                tree.leaves.ctypes.data,
                len(tree.features),
                tree.depth,
                tree.leaves.shape[2],
            )
            for target, tree in self._trees.items()
        }

    @classmethod
    def load(cls, library: Path, boosters: Mapping[str, xgb.Booster]) -> FlatTrees | None:
        """The compiled evaluator with every booster's arrays; ``None`` when a booster cannot be held."""
        trees = {target: FlatTree.of(booster) for target, booster in boosters.items()}
        if any(tree is None for tree in trees.values()):
            return None
        return cls(library, {target: tree for target, tree in trees.items() if tree})

    def outputs(
        self, target: str, rows: npt.NDArray[np.float32], *, keep_gil: bool = True
    ) -> npt.NDArray[np.float32]:
        """One target's margins for C-contiguous float32 ``rows``: a value per row, or (rows, outputs)."""
        features, thresholds, leaves, trees, depth, outputs = self._arguments[target]
        out = np.empty((len(rows), outputs), dtype=np.float32)
        out[:] = self._trees[target].base_margin
        predict = self._keeping_gil if keep_gil else self._releasing_gil
        predict(rows.ctypes.data, len(rows), rows.shape[1], features, thresholds, leaves, trees, depth,
                      outputs, out.ctypes.data)  # fmt: skip
        return out[:, 0] if outputs == 1 else out
