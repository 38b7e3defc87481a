"""Training: one XGBoost booster per target, evaluated on held-out rows, packed into a bundle.

Sources of rows: the synthetic workload (the embedded default) or a file of recorded observations
(CSV or Parquet) with the feature columns plus ``actual_ttft_ms`` and ``actual_tpot_ms``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from podlatency import workload
from podlatency.bundle import ModelBundle
from podlatency.errors import TrainingDataError
from podlatency.schema import FEATURE_NAMES, MAX_COUNT, POD_TYPE_CODES, RAW_FEATURES, add_derived_columns

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

ACTUAL_COLUMNS = {"ttft": "actual_ttft_ms", "tpot": "actual_tpot_ms"}
FRACTION_COLUMNS = {"kv_cache_percentage", "prefix_cache_score"}
OPTIONAL_COLUMNS = {"pod_type", "prefill_tokens_in_flight", "decode_tokens_in_flight"}


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    """How boosters are fitted."""

    objective: str = "mean"
    quantile_alpha: float = 0.9
    rounds: int = 200
    max_depth: int = 6
    learning_rate: float = 0.1
    holdout_share: float = 0.2
    # One OpenMP thread: with all cores, training beside busy processes slowed from 0.8 s to 28 s
    # (20k rows, two CPU-bound neighbours on 2 cores): OpenMP teams spin while waiting for each other.
    nthread: int = 1
    seed: int = 0


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Features as the model's float32 matrix and the observed latency per target."""

    features: npt.NDArray[np.float32]
    targets: dict[str, npt.NDArray[np.float64]]


def train_bundle(data: TrainingSet, options: TrainingOptions, source: str) -> ModelBundle:
    """Fit one booster per target on all but a held-out share, and record held-out metrics."""
    rows = len(data.features)
    if rows < 20:
        raise TrainingDataError(f"{rows} rows is too few to train on; need at least 20")
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(rows)
    holdout = max(1, int(rows * options.holdout_share))
    test_index, train_index = order[:holdout], order[holdout:]
    params: dict[str, Any] = {
        "tree_method": "hist",
        "max_depth": options.max_depth,
        "eta": options.learning_rate,
        "nthread": options.nthread,
        "seed": options.seed,
    }
    if options.objective == "quantile":
        params |= {"objective": "reg:quantileerror", "quantile_alpha": options.quantile_alpha}
    else:
        params |= {"objective": "reg:squarederror"}
    boosters: dict[str, xgb.Booster] = {}
    metrics: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for target, observed in data.targets.items():
        train_matrix = xgb.DMatrix(
            data.features[train_index], label=observed[train_index], feature_names=list(FEATURE_NAMES)
        )
        booster = xgb.train(params, train_matrix, num_boost_round=options.rounds)
        # Serving hands XGBoost plain numpy matrices, so boosters carry no feature names.
        booster.feature_names = None
        predicted = booster.inplace_predict(data.features[test_index])
        metrics[target] = evaluate(observed[test_index], np.asarray(predicted, dtype=np.float64), options)
        boosters[target] = booster
    logger.info(
        "trained %d boosters on %d rows in %.1f s", len(boosters), rows, time.perf_counter() - started
    )
    return ModelBundle.create(
        boosters,
        objective=options.objective,
        quantile_alpha=options.quantile_alpha if options.objective == "quantile" else None,
        metrics=metrics,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        training_rows=rows,
        source=source,
    )


def evaluate(
    observed: npt.NDArray[np.float64], predicted: npt.NDArray[np.float64], options: TrainingOptions
) -> dict[str, float]:
    """Held-out MAE and MAPE; for quantile models also coverage and pinball loss."""
    error = observed - predicted
    result = {
        "mae_ms": float(np.mean(np.abs(error))),
        "mape": float(np.mean(np.abs(error) / np.maximum(np.abs(observed), 1e-9))),
        "holdout_rows": float(len(observed)),
    }
    if options.objective == "quantile":
        alpha = options.quantile_alpha
        result["coverage"] = float(np.mean(observed <= predicted))
        result["pinball_loss"] = float(np.mean(np.maximum(alpha * error, (alpha - 1.0) * error)))
    return result


def synthetic_training_set(samples: int, seed: int = 0) -> TrainingSet:
    """Rows drawn from the synthetic workload."""
    sample = workload.generate(samples, seed=seed)
    return TrainingSet(features=sample.features, targets={"ttft": sample.ttft_ms, "tpot": sample.tpot_ms})


def read_samples(path: Path) -> TrainingSet:
    """Read recorded observations from CSV or Parquet, refusing the file with the first bad column."""
    import pandas as pd  # noqa: PLC0415  (pandas costs ~50 MB; serving never needs it)

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
        else:
            raise TrainingDataError(f"{path}: unknown sample format {suffix!r}; use .csv or .parquet")
    except FileNotFoundError:
        raise TrainingDataError(f"{path}: no such file") from None
    except (ValueError, OSError) as error:
        raise TrainingDataError(f"{path}: unreadable ({error})") from None
    required = [name for name in RAW_FEATURES if name not in OPTIONAL_COLUMNS] + list(ACTUAL_COLUMNS.values())
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise TrainingDataError(f"{path}: missing column(s) {', '.join(missing)}", field=missing[0])
    for name in OPTIONAL_COLUMNS - {"pod_type"}:
        if name not in frame.columns:
            frame[name] = 0
    if "pod_type" not in frame.columns:
        frame["pod_type"] = ""
    pod_types = frame["pod_type"].fillna("").astype(str)
    unknown = sorted(set(pod_types) - set(POD_TYPE_CODES))
    if unknown:
        raise TrainingDataError(f"{path}: column pod_type has unknown value(s) {unknown}", field="pod_type")
    numeric = {name: _checked_column(frame, name, path) for name in [*RAW_FEATURES, *ACTUAL_COLUMNS.values()]}
    matrix = np.empty((len(frame), len(FEATURE_NAMES)), dtype=np.float32)
    for index, name in enumerate(RAW_FEATURES):
        matrix[:, index] = numeric[name]
    matrix[:, len(RAW_FEATURES)] = pod_types.map(POD_TYPE_CODES).to_numpy(dtype=np.float32)
    add_derived_columns(matrix)
    return TrainingSet(
        features=matrix,
        targets={target: numeric[column] for target, column in ACTUAL_COLUMNS.items()},
    )


def _checked_column(frame: pd.DataFrame, name: str, path: Path) -> npt.NDArray[np.float64]:
    """One column as float64, refused with its name and first bad row when not numeric or out of range."""
    import pandas as pd  # noqa: PLC0415

    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise TrainingDataError(
            f"{path}: column {name} has a non-numeric or missing value at row {first + 2} "
            f"({frame[name].iloc[first]!r})",
            field=name,
        )
    if name in ACTUAL_COLUMNS.values():
        upper = float("inf")
    else:
        upper = 1.0 if name in FRACTION_COLUMNS else float(MAX_COUNT)
    out_of_range = (values < 0) | (values > upper)
    if out_of_range.any():
        first = int(np.flatnonzero(out_of_range)[0])
        raise TrainingDataError(
            f"{path}: column {name} value {values[first]} at row {first + 2} is outside [0, {upper:g}]",
            field=name,
        )
    return values
