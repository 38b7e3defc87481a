"""From a booster's margins to latencies: the load trend added, back from logs, calibrated, sorted.

What a :class:`~podlatency.bundle.ModelBundle` records (``log_latency``, ``load_trend``,
``prediction_scale``, ``quantiles``) is applied here, the same way by every engine, by training
when it scores held-out rows, and by the naive server the benchmarks compare with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from podlatency.schema import FEATURE_NAMES


def trend_vector(
    slopes: dict[str, float], feature_names: tuple[str, ...] = FEATURE_NAMES
) -> npt.NDArray[np.float64] | None:
    """A load trend as one slope per column of ``feature_names`` (``None`` for no trend)."""
    if not slopes:
        return None
    return np.array([slopes.get(name, 0.0) for name in feature_names], dtype=np.float64)


def trend_of(matrix: npt.NDArray[np.float32], trend: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The load trend's value for each row: its slopes times ``log1p`` of the features.

    ``trend`` is one target's slopes (a value per row) or :meth:`ModelBundle.trend_matrix` (a column
    per target, so ``log1p`` runs once for all).

    On ``log1p``, so the trend grows ever more slowly: the first requests on a pod count, and a count
    a billion times larger than usual adds a fifth at most, not a billion times the slope.
    """
    return np.log1p(matrix, dtype=np.float64) @ trend


def as_latencies(
    raw: Any,
    trend_values: npt.NDArray[np.float64] | None,
    scale: tuple[float, ...] | None,
    *,
    log_latency: bool,
) -> npt.NDArray[np.float64]:
    """A booster's raw output as latencies in ms: a value per row, or a row of quantiles per row.

    :func:`unscaled_latencies`, then :func:`calibrated`.
    """
    return calibrated(unscaled_latencies(raw, trend_values, log_latency=log_latency), scale)


def unscaled_latencies(
    raw: Any, trend_values: npt.NDArray[np.float64] | None, *, log_latency: bool
) -> npt.NDArray[np.float64]:
    """A booster's raw output in float64 with the load trend added (:func:`trend_of`), back from logs."""
    predicted = np.array(raw, dtype=np.float64)  # a copy: changed in place
    if predicted.ndim != 2 or predicted.shape[1] == 1:
        predicted = predicted.reshape(-1)  # one output, however an engine shaped it
    if trend_values is not None:
        predicted += trend_values[:, None] if predicted.ndim == 2 else trend_values
    if log_latency:
        np.exp(predicted, out=predicted)
    return predicted


def calibrated(
    latencies: npt.NDArray[np.float64], scale: tuple[float, ...] | None
) -> npt.NDArray[np.float64]:
    """Latencies with each output's calibration applied, clipped at 0 (in place).

    Several quantiles are then sorted along each row, so they never cross (p50 <= p90 <= p99),
    whatever their calibrations did.
    """
    several = latencies.ndim == 2
    if scale is not None:
        latencies *= np.asarray(scale) if several else scale[0]
    np.maximum(latencies, 0.0, out=latencies)
    if several:
        latencies.sort(axis=1)
    return latencies
