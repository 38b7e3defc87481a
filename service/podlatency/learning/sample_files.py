"""Recorded observations on disk: CSV or Parquet files of pod rows and the latencies they saw.

A file holds the row fields (the llm-d predictor's features; ``pod_type``, the in-flight token counts
and the encoder sizes may be left out) plus ``actual_ttft_ms`` and ``actual_tpot_ms``; an actual of 0
is "not observed" for that target, and other columns (``timestamp``, say) are ignored.
``podlatency train --samples`` reads one; ``podlatency samples`` writes one from the synthetic workload.
pandas is imported only here, only when a file is read or written: serving never needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from podlatency.errors import TrainingDataError
from podlatency.learning import workload
from podlatency.learning.training import TrainingSet
from podlatency.schema import (
    ACTUAL_COLUMNS,
    FEATURE_NAMES,
    MAX_COUNT,
    POD_TYPE_CODES,
    RAW_FEATURES,
    add_derived_columns,
)

if TYPE_CHECKING:
    import pandas as pd

FRACTION_COLUMNS = {"kv_cache_percentage", "prefix_cache_score"}
OPTIONAL_COLUMNS = {
    "pod_type",
    "prefill_tokens_in_flight",
    "decode_tokens_in_flight",
    "encoder_input_size",
    "encoder_matched_size",
}


def write_synthetic_samples(path: Path, rows: int, seed: int = 0, slowdown: float = 1.0) -> None:
    """A samples file (CSV or Parquet, by suffix) of ``rows`` rows of the synthetic workload.

    The file :func:`read_samples` reads: the row fields and ``actual_ttft_ms``/``actual_tpot_ms``;
    ``slowdown`` scales the latencies (a slower fleet).
    """
    import pandas as pd  # noqa: PLC0415  (pandas costs ~50 MB; serving never needs it)

    suffix = path.suffix.lower()
    if suffix not in {".csv", ".parquet", ".pq"}:
        raise TrainingDataError(f"{path}: unknown sample format {suffix!r}; use .csv or .parquet")
    sample = workload.generate(rows, seed=seed, slowdown=slowdown)
    frame = pd.DataFrame(sample.rows())
    frame[ACTUAL_COLUMNS["ttft"]] = sample.ttft_ms.round(3)
    frame[ACTUAL_COLUMNS["tpot"]] = sample.tpot_ms.round(3)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def read_samples(path: Path) -> TrainingSet:
    """Read recorded observations from CSV or Parquet, refusing the file with the first bad column.

    An actual of 0 is "not observed" for that target; other columns (``timestamp``, say) are ignored.
    """
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
    over = numeric["encoder_matched_size"] > numeric["encoder_input_size"]
    if over.any():
        first = int(np.flatnonzero(over)[0])
        raise TrainingDataError(
            f"{path}: column encoder_matched_size exceeds encoder_input_size at row {first + 2}",
            field="encoder_matched_size",
        )
    matrix = np.empty((len(frame), len(FEATURE_NAMES)), dtype=np.float32)
    for index, name in enumerate(RAW_FEATURES):
        matrix[:, index] = numeric[name]
    matrix[:, len(RAW_FEATURES)] = pod_types.map(POD_TYPE_CODES).to_numpy(dtype=np.float32)
    add_derived_columns(matrix)
    return TrainingSet.from_observations(
        matrix, {target: numeric[column] for target, column in ACTUAL_COLUMNS.items()}
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
