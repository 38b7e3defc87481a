"""A model bundle: one XGBoost booster per target plus JSON metadata, saved without pickle.

On disk a bundle is a folder::

    metadata.json     feature names and order, targets, objective, quantiles, load trend,
                      calibration, metrics, trained_at, version (:mod:`podlatency.bundle_metadata`)
    ttft.ubj          the TTFT booster in XGBoost's own UBJSON format
    tpot.ubj          the TPOT booster

The version is a content hash over what decides predictions (booster bytes, feature names, objective,
quantiles, calibration, load trend), so two bundles with the same version predict the same; loading
recomputes it and refuses a mismatch.

A bundle's features are this server's :data:`~podlatency.schema.FEATURE_NAMES` or, for a bundle trained
before some were added, a subset of them: the predictor hands it only the columns it knows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from podlatency.bundle_metadata import (
    METADATA_FILE,
    booster_outputs,
    content_version,
    read_load_trend,
    read_log_latency,
    read_prediction_scale,
    read_quantiles,
    scale_metadata,
)
from podlatency.errors import ModelLoadError
from podlatency.margins import as_latencies, trend_of, trend_vector
from podlatency.schema import FEATURE_NAMES, TARGETS

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
    (:mod:`podlatency.learning.load_order`). :func:`podlatency.margins.as_latencies` applies them.
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
