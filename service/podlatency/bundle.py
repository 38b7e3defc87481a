"""A model bundle: one XGBoost booster per target plus JSON metadata, saved without pickle.

On disk a bundle is a folder::

    metadata.json     feature names and order, targets, objective, load trend, calibration, metrics,
                      trained_at, version
    ttft.ubj          the TTFT booster in XGBoost's own UBJSON format
    tpot.ubj          the TPOT booster

The version is a content hash over what decides predictions (booster bytes, feature names, objective,
calibration), so two bundles with the same version predict the same; loading recomputes it and refuses
a mismatch.

A bundle's features are this server's :data:`~podlatency.schema.FEATURE_NAMES` or, for a bundle trained
before some were added, a subset of them: the predictor hands it only the columns it knows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from podlatency.errors import ModelLoadError
from podlatency.schema import FEATURE_NAMES, TARGETS

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """Immutable: a new model is a new bundle, swapped in whole.

    ``quantiles`` are the quantiles a quantile model serves, ascending, one per booster output: a
    booster trained for several carries them all in each leaf (older bundles hold one). The primary
    one, ``quantile_alpha``, is among them. A mean model has none.

    ``prediction_scale`` holds, per target of a quantile model, the factor each output's latencies
    are multiplied by: the calibration that makes each quantile hold on rows the booster never saw
    (:func:`podlatency.learning.training.conformal_scale`). Targets not in it are not scaled.

    ``log_latency`` says the boosters' margins are the natural log of the latency in ms (older bundles
    predict milliseconds). ``load_trend`` holds, per target, slopes per unit of ``log1p`` of some
    features (in margin units), added to the margin: what keeps pods whose load differs apart
    (:mod:`podlatency.learning.load_order`). :func:`as_latencies` applies all three.
    """

    boosters: dict[str, xgb.Booster]
    feature_names: tuple[str, ...]
    objective: str
    quantile_alpha: float | None
    metrics: dict[str, dict[str, float]]
    trained_at: str
    training_rows: int
    source: str
    version: str = field(default="")
    prediction_scale: dict[str, tuple[float, ...]] = field(default_factory=dict)
    load_trend: dict[str, dict[str, float]] = field(default_factory=dict)
    log_latency: bool = False
    quantiles: tuple[float, ...] = ()

    @classmethod
    def create(
        cls,
        boosters: dict[str, xgb.Booster],
        *,
        objective: str,
        quantile_alpha: float | None,
        metrics: dict[str, dict[str, float]],
        trained_at: str,
        training_rows: int,
        source: str,
        prediction_scale: dict[str, tuple[float, ...]] | None = None,
        load_trend: dict[str, dict[str, float]] | None = None,
        log_latency: bool = False,
        quantiles: tuple[float, ...] | None = None,
        feature_names: tuple[str, ...] = FEATURE_NAMES,
    ) -> ModelBundle:
        """A bundle with its content-hash version filled in (``quantiles`` by default: the one quantile)."""
        raw = {target: bytes(booster.save_raw("ubj")) for target, booster in boosters.items()}
        scale = {target: tuple(factors) for target, factors in (prediction_scale or {}).items()}
        trend = {target: dict(slopes) for target, slopes in (load_trend or {}).items() if slopes}
        if quantiles is None:
            quantiles = () if quantile_alpha is None else (quantile_alpha,)
        version = content_version(
            raw,
            feature_names,
            objective,
            quantile_alpha,
            scale,
            load_trend=trend,
            log_latency=log_latency,
            quantiles=quantiles,
        )
        return cls(
            boosters=boosters,
            feature_names=feature_names,
            objective=objective,
            quantile_alpha=quantile_alpha,
            metrics=metrics,
            trained_at=trained_at,
            training_rows=training_rows,
            source=source,
            version=version,
            prediction_scale=scale,
            load_trend=trend,
            log_latency=log_latency,
            quantiles=tuple(quantiles),
        )

    @property
    def primary_output(self) -> int | None:
        """Which output column is the primary quantile (``None``: one output per booster)."""
        return self.quantiles.index(self.quantile_alpha) if len(self.quantiles) > 1 else None

    def trend_vector(self, target: str) -> npt.NDArray[np.float64] | None:
        """``target``'s load trend as one slope per column of :attr:`feature_names` (``None``: none)."""
        return trend_vector(self.load_trend.get(target, {}), self.feature_names)

    def trend_matrix(self) -> npt.NDArray[np.float64] | None:
        """Every target's load trend, a column each in :attr:`boosters` order (``None``: no trend)."""
        vectors = [self.trend_vector(target) for target in self.boosters]
        if all(vector is None for vector in vectors):
            return None
        zeros = np.zeros(len(self.feature_names))
        return np.column_stack([zeros if vector is None else vector for vector in vectors])

    def latencies(self, target: str, raw: Any, matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """``target``'s booster output on ``matrix`` (this bundle's columns) as latencies."""
        vector = self.trend_vector(target)
        shift = None if vector is None else trend_of(matrix, vector)
        return as_latencies(raw, shift, self.prediction_scale.get(target), log_latency=self.log_latency)

    def feature_importance(self, target: str) -> dict[str, float]:
        """Each feature's share of the target's booster's total split gain (0 for features never split on)."""
        scores = self.boosters[target].get_score(importance_type="total_gain")
        gains = {name: float(value) for name, value in scores.items() if isinstance(value, (int, float))}
        total = sum(gains.values()) or 1.0
        return {name: gains.get(f"f{index}", 0.0) / total for index, name in enumerate(self.feature_names)}

    def ignored_features(self) -> list[str]:
        """Features of this server the model was trained without (they do not change its predictions)."""
        return [name for name in FEATURE_NAMES if name not in self.feature_names]

    def metadata(self) -> dict[str, Any]:
        """The JSON sidecar's content."""
        return {
            "format": FORMAT_VERSION,
            "version": self.version,
            "model_type": "xgboost",
            "targets": list(self.boosters),
            "feature_names": list(self.feature_names),
            "objective": self.objective,
            "quantile_alpha": self.quantile_alpha,
            "quantiles": list(self.quantiles),
            "prediction_scale": scale_metadata(self.prediction_scale),
            "load_trend": self.load_trend,
            "log_latency": self.log_latency,
            "metrics": self.metrics,
            "trained_at": self.trained_at,
            "training_rows": self.training_rows,
            "source": self.source,
            "xgboost_version": xgb.__version__,
        }

    def save(self, folder: Path) -> Path:
        """Write the bundle into ``folder`` atomically: readers see all of it or none of it."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            for target, booster in self.boosters.items():
                (staging / f"{target}.ubj").write_bytes(bytes(booster.save_raw("ubj")))
            (staging / METADATA_FILE).write_text(json.dumps(self.metadata(), indent=2) + "\n")
            for written in staging.iterdir():
                _fsync(written)
            try:
                staging.rename(folder)
            except OSError:
                # Another process (a second worker training the same default) got there first;
                # the version is a content hash, so what it wrote is what we would have written.
                if not (folder / METADATA_FILE).exists():
                    raise
                shutil.rmtree(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return folder


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


def scale_metadata(prediction_scale: dict[str, tuple[float, ...]]) -> dict[str, float | list[float]]:
    """``prediction_scale`` as ``metadata.json`` holds it: a number per target of one output, else a list."""
    return {
        target: factors[0] if len(factors) == 1 else list(factors)
        for target, factors in prediction_scale.items()
    }


def content_version(
    raw_boosters: dict[str, bytes],
    feature_names: tuple[str, ...],
    objective: str,
    quantile_alpha: float | None,
    prediction_scale: dict[str, tuple[float, ...]] | None = None,
    *,
    load_trend: dict[str, dict[str, float]] | None = None,
    log_latency: bool = False,
    quantiles: tuple[float, ...] = (),
) -> str:
    """The first 16 hex digits of a SHA-256 over everything that decides predictions."""
    digest = hashlib.sha256()
    decisive: list[object] = [list(feature_names), objective, quantile_alpha]
    # Each is absent from bundles without it, whose versions stay as they were.
    if prediction_scale:
        decisive.append(sorted(scale_metadata(prediction_scale).items()))
    if log_latency:
        decisive.append("log_latency")
    if load_trend:
        decisive.append(
            {"load_trend": {target: sorted(slopes.items()) for target, slopes in sorted(load_trend.items())}}
        )
    if len(quantiles) > 1:
        decisive.append({"quantiles": list(quantiles)})
    digest.update(json.dumps(decisive).encode())
    for target in sorted(raw_boosters):
        digest.update(target.encode())
        digest.update(hashlib.sha256(raw_boosters[target]).digest())
    return digest.hexdigest()[:16]


def read_load_trend(
    metadata: dict[str, Any], folder: Path, feature_names: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """The metadata's ``load_trend``: per target of :data:`TARGETS`, finite slopes of model features."""
    try:
        load_trend = {
            str(target): {str(name): float(slope) for name, slope in slopes.items()}
            for target, slopes in metadata.get("load_trend", {}).items()
        }
    except (TypeError, ValueError, AttributeError) as error:
        raise ModelLoadError(
            f"{folder / METADATA_FILE}: load_trend is not slopes by feature ({error})"
        ) from None
    strange = [
        f"{target}.{name}"
        for target, slopes in load_trend.items()
        for name, slope in slopes.items()
        if target not in TARGETS or name not in feature_names or not math.isfinite(slope)
    ]
    if strange:
        raise ModelLoadError(
            f"{folder / METADATA_FILE}: load_trend holds no finite slope of a model feature: {strange}"
        )
    return load_trend


def read_log_latency(metadata: dict[str, Any], folder: Path) -> bool:
    """The metadata's ``log_latency`` (absent: false)."""
    log_latency = metadata.get("log_latency", False)
    if not isinstance(log_latency, bool):
        raise ModelLoadError(f"{folder / METADATA_FILE}: log_latency is {log_latency!r}, not true or false")
    return log_latency


def read_quantiles(metadata: dict[str, Any], folder: Path, quantile_alpha: float | None) -> tuple[float, ...]:
    """The metadata's ``quantiles``: ascending, distinct, in (0, 1), the primary among them.

    Absent (older bundles): the one quantile of a quantile model, none for a mean model.
    """
    default = [] if quantile_alpha is None else [quantile_alpha]
    try:
        quantiles = tuple(float(value) for value in metadata.get("quantiles", default))
    except (TypeError, ValueError) as error:
        raise ModelLoadError(
            f"{folder / METADATA_FILE}: quantiles is not a list of numbers ({error})"
        ) from None
    ascending = all(low < high for low, high in itertools.pairwise(quantiles))
    if not ascending or not all(0.0 < value < 1.0 for value in quantiles):
        raise ModelLoadError(
            f"{folder / METADATA_FILE}: quantiles {list(quantiles)} are not distinct, ascending values "
            "strictly between 0 and 1"
        )
    if (quantile_alpha is None) != (not quantiles) or (quantiles and quantile_alpha not in quantiles):
        raise ModelLoadError(
            f"{folder / METADATA_FILE}: quantiles {list(quantiles)} do not hold "
            f"quantile_alpha {quantile_alpha}"
        )
    return quantiles


def read_prediction_scale(
    metadata: dict[str, Any], folder: Path, quantiles: tuple[float, ...]
) -> dict[str, tuple[float, ...]]:
    """The metadata's ``prediction_scale``: per target a factor, or a list of one per quantile."""
    outputs = max(len(quantiles), 1)
    try:
        scale = {
            str(target): tuple(
                float(value) for value in (factors if isinstance(factors, list) else [factors])
            )
            for target, factors in metadata.get("prediction_scale", {}).items()
        }
    except (TypeError, ValueError, AttributeError) as error:
        raise ModelLoadError(
            f"{folder / METADATA_FILE}: prediction_scale is not factors by target ({error})"
        ) from None
    wrong = [target for target, factors in scale.items() if len(factors) != outputs]
    if wrong:
        raise ModelLoadError(
            f"{folder / METADATA_FILE}: prediction_scale of {', '.join(wrong)} needs one factor per "
            f"quantile ({outputs})"
        )
    return scale


def booster_outputs(booster: xgb.Booster) -> int:
    """How many values the booster gives per row (a quantile set's boosters give one per quantile)."""
    config = json.loads(booster.save_config())
    return int(config["learner"]["learner_model_param"].get("num_target", 1))


def load_bundle(folder: Path) -> ModelBundle:
    """Load and verify a bundle; any fault is a :class:`ModelLoadError` naming the file and why."""
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{folder}: no {METADATA_FILE}") from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{folder / METADATA_FILE}: unreadable metadata ({error})") from None
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{folder / METADATA_FILE}: metadata is not a JSON object")
    try:
        feature_names = tuple(str(name) for name in metadata["feature_names"])
        targets = [str(target) for target in metadata["targets"]]
        objective = str(metadata["objective"])
        alpha = metadata.get("quantile_alpha")
        quantile_alpha = None if alpha is None else float(alpha)
        quantiles = read_quantiles(metadata, folder, quantile_alpha)
        prediction_scale = read_prediction_scale(metadata, folder, quantiles)
        load_trend = read_load_trend(metadata, folder, feature_names)
        log_latency = read_log_latency(metadata, folder)
        expected_version = str(metadata["version"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelLoadError(f"{folder / METADATA_FILE}: missing or invalid field {error}") from None
    unknown = [name for name in feature_names if name not in FEATURE_NAMES]
    if unknown or len(set(feature_names)) != len(feature_names):
        raise ModelLoadError(
            f"{folder}: model features {list(feature_names)} are not a subset of this server's "
            f"{list(FEATURE_NAMES)}" + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    if sorted(targets) != sorted(TARGETS):
        raise ModelLoadError(f"{folder}: model targets {targets} are not {list(TARGETS)}")
    raw: dict[str, bytes] = {}
    boosters: dict[str, xgb.Booster] = {}
    for target in TARGETS:
        path = folder / f"{target}.ubj"
        try:
            raw[target] = path.read_bytes()
            booster = xgb.Booster()
            booster.load_model(bytearray(raw[target]))
        except OSError as error:
            raise ModelLoadError(f"{path}: unreadable ({error})") from None
        except xgb.core.XGBoostError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else "invalid model"
            raise ModelLoadError(f"{path}: not a valid XGBoost model ({first_line})") from None
        if booster.num_features() != len(feature_names):
            raise ModelLoadError(
                f"{path}: booster expects {booster.num_features()} features, "
                f"its metadata names {len(feature_names)}"
            )
        if booster_outputs(booster) != max(len(quantiles), 1):
            raise ModelLoadError(
                f"{path}: booster gives {booster_outputs(booster)} values per row, "
                f"its metadata names {max(len(quantiles), 1)} (quantiles {list(quantiles)})"
            )
        boosters[target] = booster
    actual_version = content_version(
        raw,
        feature_names,
        objective,
        quantile_alpha,
        prediction_scale,
        load_trend=load_trend,
        log_latency=log_latency,
        quantiles=quantiles,
    )
    if actual_version != expected_version:
        raise ModelLoadError(
            f"{folder}: content hash {actual_version} does not match recorded version {expected_version}"
        )
    return ModelBundle(
        boosters=boosters,
        feature_names=feature_names,
        objective=objective,
        quantile_alpha=quantile_alpha,
        metrics=metadata.get("metrics", {}),
        trained_at=str(metadata.get("trained_at", "")),
        training_rows=int(metadata.get("training_rows", 0)),
        source=str(metadata.get("source", "")),
        version=expected_version,
        prediction_scale=prediction_scale,
        load_trend=load_trend,
        log_latency=log_latency,
        quantiles=quantiles,
    )


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
