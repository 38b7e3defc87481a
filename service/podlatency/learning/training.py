"""Training: one XGBoost booster per target, evaluated on held-out rows, packed into a bundle.

Sources of rows: the synthetic workload (the embedded default), a file of recorded observations
(:mod:`podlatency.learning.sample_files`), or the samples a trainer keeps
(:mod:`podlatency.learning.samples`).

**An actual of 0 means "not observed".** The llm-d router reports each request as a TTFT row (its
``actual_tpot_ms`` is 0) and, when streamed, a TPOT row (its ``actual_ttft_ms`` is 0). Each target
therefore trains, holds out and is evaluated on its own rows: those where its actual is above 0.

**Boosters learn the log of the latency,** with monotone constraints, minus a small load trend
that the bundle carries and serving adds back: predictions are monotone in load and keep pods whose
load differs apart (:mod:`podlatency.learning.load_order`).

A mean model is gamma regression: its trees sum to the log of the mean latency. A quantile model
learns the quantile of the log latency, which is the log of the latency's quantile.

**A quantile model serves a set of quantiles** (``quantile_alpha``, the primary, and ``quantiles``):
one booster per target whose trees carry a vector of every quantile in each leaf (XGBoost's
``multi_output_tree``), with one shared intercept (compiled trees take one) and steps twice as big,
half as many, which trains the set in about twice a single quantile's time (docs/performance.md,
"Several quantiles per target"). A set of one is a single-output booster, as older bundles hold.

**Quantile models are calibrated.** A booster fitted with the quantile objective covers its own
training rows at the quantile, but fresh rows less often: its leaves fit their rows' noise, most on
small data (docs/llm-d-router.md). So each target's predictions are scaled by the factor that makes
them cover the held-out rows at the quantile (split conformal calibration on the ratio actual /
predicted; for a set, a factor per quantile, the quantiles sorted after), and the booster is then
refitted on all the target's rows (the factor found for fewer rows is, if anything, conservative for
more). The metrics reported are cross-fitted (each half of
the held-out rows is scored with the factor found on the other half), so they are honest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from podlatency.bundle import ModelBundle
from podlatency.errors import TrainingDataError
from podlatency.learning import workload
from podlatency.learning.load_order import load_trend, monotone_constraints
from podlatency.margins import calibrated, trend_of, trend_vector, unscaled_latencies
from podlatency.schema import (
    ACTUAL_COLUMNS,
    FEATURE_NAMES,
    TARGETS,
)

logger = logging.getLogger(__name__)

MIN_TRAINING_ROWS = 20

FloatMatrix = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    """How boosters are fitted."""

    objective: str = "mean"
    quantile_alpha: float = 0.9
    # Further quantiles a quantile model serves beside quantile_alpha, the primary (one booster each target).
    quantiles: tuple[float, ...] = ()
    rounds: int = 200
    max_depth: int = 6
    learning_rate: float = 0.1
    holdout_share: float = 0.2
    # Logs, monotone constraints and the load trend (load_order.py): off only to measure their worth.
    log_latency: bool = True
    monotone: bool = True
    load_trend: bool = True
    # One OpenMP thread: with all cores, training beside busy processes slowed from 0.8 s to 28 s
    # (20k rows, two CPU-bound neighbours on 2 cores): OpenMP teams spin while waiting for each other.
    nthread: int = 1
    seed: int = 0

    def served_quantiles(self) -> tuple[float, ...]:
        """The quantiles a model trained so serves, ascending: none for a mean model."""
        if self.objective != "quantile":
            return ()
        return tuple(sorted({self.quantile_alpha, *self.quantiles}))


SET_STEP_FACTOR = 2
"""A quantile set's trees take steps this many times bigger, this many times fewer: vector leaves cost
more per round, and the set then trains in about twice a single quantile's time for 5% more pinball loss."""


@dataclass(frozen=True, slots=True)
class TargetRows:
    """The rows one target was observed on: features as the model's float32 matrix, and the latencies."""

    features: FloatMatrix
    observed_ms: FloatArray

    def __len__(self) -> int:
        return len(self.observed_ms)


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Per target, the rows it was observed on."""

    by_target: dict[str, TargetRows]

    @classmethod
    def from_observations(cls, features: FloatMatrix, actuals: dict[str, FloatArray]) -> TrainingSet:
        """Rows with every target's actual, 0 where not observed: each target keeps its observed rows."""
        by_target = {}
        for target, observed in actuals.items():
            seen = observed > 0
            by_target[target] = TargetRows(np.ascontiguousarray(features[seen]), observed[seen])
        return cls(by_target)

    def rows(self, target: str) -> int:
        """How many rows ``target`` was observed on."""
        rows = self.by_target.get(target)
        return 0 if rows is None else len(rows)


@dataclass(frozen=True, slots=True)
class TrainedTarget:
    """One target's booster, how its output becomes latencies, and its held-out metrics."""

    booster: xgb.Booster
    scale: tuple[float, ...] | None
    metrics: dict[str, float]
    load_trend: dict[str, float] = field(default_factory=dict)
    log_latency: bool = False

    def latencies(self, features: FloatMatrix) -> FloatArray:
        """The target's predictions for ``features``, as its bundle will serve them."""
        return calibrated(self.unscaled_latencies(features), self.scale)

    def unscaled_latencies(self, features: FloatMatrix) -> FloatArray:
        """The target's predictions before calibration (several quantiles: a column each, unsorted)."""
        vector = trend_vector(self.load_trend)
        shift = None if vector is None else trend_of(features, vector)
        raw = self.booster.inplace_predict(features, predict_type="margin")
        return unscaled_latencies(raw, shift, log_latency=self.log_latency)


def booster_params(options: TrainingOptions, target: str) -> dict[str, Any]:
    """XGBoost's parameters for ``target`` as ``options`` say (a quantile set's intercept is the caller's)."""
    params: dict[str, Any] = {
        "tree_method": "hist",
        "max_depth": options.max_depth,
        "eta": options.learning_rate,
        "nthread": options.nthread,
        "seed": options.seed,
    }
    if options.monotone:
        params["monotone_constraints"] = monotone_constraints(target)
    quantiles = options.served_quantiles()
    if len(quantiles) > 1:
        return params | {
            "objective": "reg:quantileerror",
            "quantile_alpha": np.array(quantiles),
            "multi_strategy": "multi_output_tree",
            "eta": options.learning_rate * SET_STEP_FACTOR,
        }
    if options.objective == "quantile":
        return params | {"objective": "reg:quantileerror", "quantile_alpha": options.quantile_alpha}
    # Gamma regression learns the log of the mean: the mean itself, not a typical value below it.
    return params | {"objective": "reg:gamma" if options.log_latency else "reg:squarederror"}


def train_target(target: str, rows: TargetRows, options: TrainingOptions) -> TrainedTarget:
    """Fit one target's booster on all but a held-out share of its rows; calibrate and score on that share."""
    count = len(rows)
    if count < MIN_TRAINING_ROWS:
        raise TrainingDataError(
            f"{target}: {count} observed rows is too few to train on; need at least {MIN_TRAINING_ROWS}",
            field=ACTUAL_COLUMNS.get(target, target),
        )
    order = np.random.default_rng(options.seed).permutation(count)
    holdout = max(2, int(count * options.holdout_share))
    test_index, train_index = order[:holdout], order[holdout:]
    # The trend is a scale (each feature's range), not a fit: all rows set it. Its slopes are logs.
    trend = load_trend(target, rows.features) if options.load_trend and options.log_latency else {}
    booster = fit_booster(target, rows.features[train_index], rows.observed_ms[train_index], trend, options)
    observed = rows.observed_ms[test_index]
    unscaled = TrainedTarget(booster, None, {}, trend, options.log_latency)
    if options.objective != "quantile":
        return replace(
            unscaled, metrics=evaluate(observed, unscaled.latencies(rows.features[test_index]), options)
        )
    predicted = unscaled.unscaled_latencies(rows.features[test_index])
    alphas = options.served_quantiles()
    half = len(observed) // 2
    first, second = slice(0, half), slice(half, None)
    cross_fitted = np.concatenate(
        [
            calibrated(
                predicted[first].copy(), conformal_scales(observed[second], predicted[second], alphas)
            ),
            calibrated(predicted[second].copy(), conformal_scales(observed[first], predicted[first], alphas)),
        ]
    )
    metrics = evaluate(np.concatenate([observed[first], observed[second]]), cross_fitted, options)
    scale = conformal_scales(observed, predicted, alphas)
    # Refitted on every row: a quantile's local estimates are noisy, and more rows make them less so.
    refitted = fit_booster(target, rows.features, rows.observed_ms, trend, options)
    return replace(unscaled, booster=refitted, scale=scale, metrics=metrics)


def conformal_scales(
    observed: FloatArray, predicted: FloatArray, alphas: tuple[float, ...]
) -> tuple[float, ...]:
    """Per quantile (a column of ``predicted`` each, or one column), its :func:`conformal_scale`."""
    columns = predicted.reshape(len(predicted), -1)
    return tuple(conformal_scale(observed, columns[:, k], alpha) for k, alpha in enumerate(alphas))


def fit_booster(
    target: str,
    features: FloatMatrix,
    observed_ms: FloatArray,
    trend: dict[str, float],
    options: TrainingOptions,
) -> xgb.Booster:
    """One booster whose output (a margin) plus the load trend is the (log) latency.

    A quantile is learned on the log latency minus the trend; a mean (gamma regression, whose margin
    is the log of the mean) on the latency divided by ``exp(trend)``: either way serving adds the trend
    to the margin. Without logs (a measurement), the trend is in milliseconds.
    """
    vector = trend_vector(trend)
    shift = np.zeros(len(features)) if vector is None else trend_of(features, vector)
    if not options.log_latency:
        label = observed_ms - shift
    elif options.objective == "quantile":
        label = np.log(observed_ms) - shift
    else:
        label = observed_ms * np.exp(-shift)
    matrix = xgb.DMatrix(features, label=label, feature_names=list(FEATURE_NAMES))
    params, rounds = booster_params(options, target), options.rounds
    if len(options.served_quantiles()) > 1:
        # One intercept for every quantile: tl2cgen compiles a single one, XGBoost would fit one each.
        params["base_score"] = float(np.median(label))
        rounds = max(1, rounds // SET_STEP_FACTOR)
    booster = xgb.train(params, matrix, num_boost_round=rounds)
    # Serving hands XGBoost plain numpy matrices, so boosters carry no feature names.
    booster.feature_names = None
    return booster


def conformal_scale(observed: FloatArray, predicted: FloatArray, alpha: float) -> float:
    """The factor ``s`` such that ``s * predicted`` covers a share ``alpha`` of rows like these.

    Split conformal calibration on the ratio actual / predicted: the ceil((n + 1) * alpha)-th smallest
    ratio of n held-out rows, which covers at least ``alpha`` of fresh rows from the same distribution.
    """
    if len(observed) == 0:
        return 1.0
    ratios = np.sort(observed / np.maximum(predicted, 1e-6))
    rank = min(len(ratios), int(np.ceil((len(ratios) + 1) * alpha)))
    return float(ratios[rank - 1])


def assemble_bundle(
    trained: dict[str, TrainedTarget],
    options: TrainingOptions,
    source: str,
    training_rows: int,
    trained_at: str | None = None,
) -> ModelBundle:
    """A bundle of one trained booster per target, trained now unless ``trained_at`` says otherwise."""
    return ModelBundle.create(
        {target: result.booster for target, result in trained.items()},
        objective=options.objective,
        quantile_alpha=options.quantile_alpha if options.objective == "quantile" else None,
        quantiles=options.served_quantiles(),
        metrics={target: result.metrics for target, result in trained.items()},
        trained_at=datetime.now(UTC).isoformat(timespec="seconds") if trained_at is None else trained_at,
        training_rows=training_rows,
        source=source,
        prediction_scale={
            target: result.scale for target, result in trained.items() if result.scale is not None
        },
        load_trend={target: result.load_trend for target, result in trained.items()},
        log_latency=shared_log_latency(trained),
    )


def shared_log_latency(trained: dict[str, TrainedTarget]) -> bool:
    """Whether the targets' boosters learned logs: all or none, as a bundle holds one flag."""
    flags = {result.log_latency for result in trained.values()}
    if len(flags) > 1:
        raise ValueError("a bundle's boosters must all learn logs, or none")
    return flags.pop() if flags else False


def train_bundle(
    data: TrainingSet, options: TrainingOptions, source: str, trained_at: str | None = None
) -> ModelBundle:
    """Fit one booster per target, each on its own observed rows, and record held-out metrics."""
    started = time.perf_counter()
    trained = {
        target: train_target(target, data.by_target.get(target, _NO_ROWS), options) for target in TARGETS
    }
    rows = max(data.rows(target) for target in TARGETS)
    logger.info(
        "trained %d boosters on %s rows in %.1f s",
        len(trained),
        " and ".join(f"{data.rows(target)} {target}" for target in TARGETS),
        time.perf_counter() - started,
    )
    return assemble_bundle(trained, options, source, rows, trained_at)


_NO_ROWS = TargetRows(np.empty((0, len(FEATURE_NAMES)), dtype=np.float32), np.empty(0))


def evaluate(observed: FloatArray, predicted: FloatArray, options: TrainingOptions) -> dict[str, float]:
    """Held-out MAE, MAPE and median relative error; for quantile models also coverage and pinball loss.

    For a set of quantiles (a column of ``predicted`` each), the plain measures are the primary
    quantile's, and each quantile's coverage and pinball loss are also given as ``coverage@0.99``
    and ``pinball_loss@0.99``.
    """
    quantiles = options.served_quantiles()
    several = predicted.ndim == 2
    primary = predicted[:, quantiles.index(options.quantile_alpha)] if several else predicted
    error = observed - primary
    relative = np.abs(error) / np.maximum(np.abs(observed), 1e-9)
    result = {
        "mae_ms": float(np.mean(np.abs(error))),
        "mape": float(np.mean(relative)),
        "median_ape": float(np.median(relative)),
        "holdout_rows": len(observed),
    }
    if options.objective == "quantile":
        result |= quantile_measures(observed, primary, options.quantile_alpha)
    if several:
        for column, alpha in enumerate(quantiles):
            measures = quantile_measures(observed, predicted[:, column], alpha)
            result |= {f"{name}@{alpha:g}": value for name, value in measures.items()}
    return result


def quantile_measures(observed: FloatArray, predicted: FloatArray, alpha: float) -> dict[str, float]:
    """The share of rows at or below their prediction (``coverage``), and the ``pinball_loss``."""
    error = observed - predicted
    return {
        "coverage": float(np.mean(observed <= predicted)),
        "pinball_loss": float(np.mean(np.maximum(alpha * error, (alpha - 1.0) * error))),
    }


EMBEDDED_DEFAULT_SOURCE = "synthetic-default"
"""The ``source`` of the embedded default: trained on no observation (a leader never declares it)."""


def embedded_default(samples: int, options: TrainingOptions) -> ModelBundle:
    """The embedded default model: ``samples`` rows of the synthetic workload, trained as ``options`` say.

    It records no training time (``trained_at`` is empty), so every pod that trains it with the same
    settings and XGBoost holds the same bytes: the same version and the same archive SHA-256, and a
    rollout that declares it is followed everywhere.
    """
    return train_bundle(
        synthetic_training_set(samples), options, source=EMBEDDED_DEFAULT_SOURCE, trained_at=""
    )


def synthetic_training_set(samples: int, seed: int = 0) -> TrainingSet:
    """Rows drawn from the synthetic workload."""
    sample = workload.generate(samples, seed=seed)
    return TrainingSet.from_observations(sample.features, {"ttft": sample.ttft_ms, "tpot": sample.tpot_ms})
