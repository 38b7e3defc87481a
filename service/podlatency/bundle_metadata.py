"""A bundle's ``metadata.json``: how its fields are written, read and checked, and the content version.

Each reader takes the parsed metadata and the bundle's folder, and refuses a field it cannot use
with a :class:`~podlatency.errors.ModelLoadError` naming the file and the field; a field older
bundles lack reads as what they meant.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import xgboost as xgb

from podlatency.errors import ModelLoadError
from podlatency.schema import TARGETS

METADATA_FILE = "metadata.json"


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
