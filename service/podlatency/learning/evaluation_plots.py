"""The pictures of an evaluation report (matplotlib, the ``plots`` extra; imported only to draw them)."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")  # files only: no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from podlatency.learning.evaluation import Evaluation
from podlatency.learning.live_accuracy import regime_label
from podlatency.learning.samples import REGIMES


def draw(evaluation: Evaluation, out: Path) -> list[Path]:
    """Predicted against actual per target, error by regime, and (quantile models) calibration."""
    pictures = [_predicted_against_actual(evaluation, target, out) for target in evaluation.targets]
    pictures.append(_error_by_regime(evaluation, out))
    if evaluation.quantile is not None:
        pictures.append(_calibration(evaluation, out))
    return pictures


def _predicted_against_actual(evaluation: Evaluation, target: str, out: Path) -> Path:
    actual, predicted = evaluation.actual[target], evaluation.predicted[target]
    figure, axes = plt.subplots(figsize=(5.5, 5))
    positive = predicted[predicted > 0]
    low = float(min(actual.min(), positive.min() if len(positive) else actual.min())) / 1.5
    high = float(max(actual.max(), predicted.max())) * 1.5
    # A prediction of 0 ms (clipped) has no place on a log scale: drawn at the axis' lower edge.
    axes.scatter(actual, np.maximum(predicted, low), s=3, alpha=0.3)
    axes.plot([low, high], [low, high], color="black", linewidth=1, label="predicted = actual")
    axes.set(xscale="log", yscale="log", xlabel=f"actual {target} (ms)", ylabel=f"predicted {target} (ms)")
    axes.set(xlim=(low, high), ylim=(low, high))
    axes.set_title(f"{target.upper()}: predicted against actual ({len(actual)} rows)")
    axes.legend(loc="upper left")
    return _save(figure, out / f"predicted-vs-actual-{target}.png")


def _error_by_regime(evaluation: Evaluation, out: Path) -> Path:
    figure, axes = plt.subplots(figsize=(10, 6))
    labels = regime_labels(evaluation)
    width = 0.8 / max(len(evaluation.targets), 1)
    for offset, (target, result) in enumerate(evaluation.targets.items()):
        errors = [
            result.by_regime[label].median_relative_error if label in result.by_regime else 0.0
            for label in labels
        ]
        axes.barh(np.arange(len(labels)) + offset * width, errors, height=width, label=target)
    axes.set_yticks(np.arange(len(labels)) + width / 2, labels, fontsize=7)
    axes.set(xlabel="median relative error", title="Error by load regime")
    axes.invert_yaxis()
    axes.legend()
    return _save(figure, out / "error-by-regime.png")


def _calibration(evaluation: Evaluation, out: Path) -> Path:
    nominal = evaluation.quantile or 0.0
    figure, axes = plt.subplots(figsize=(10, 6))
    labels = regime_labels(evaluation)
    width = 0.8 / max(len(evaluation.targets), 1)
    for offset, (target, result) in enumerate(evaluation.targets.items()):
        covered = [
            result.by_regime[label].coverage or 0.0 if label in result.by_regime else 0.0 for label in labels
        ]
        axes.barh(np.arange(len(labels)) + offset * width, covered, height=width, label=f"{target} observed")
    axes.axvline(nominal, color="black", linewidth=1, label=f"nominal {nominal:g}")
    axes.set_yticks(np.arange(len(labels)) + width / 2, labels, fontsize=7)
    axes.set(
        xlim=(0, 1), xlabel="share of actuals at or below the prediction", title="Calibration by load regime"
    )
    axes.invert_yaxis()
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(figure, out / "calibration.png")


def regime_labels(evaluation: Evaluation) -> list[str]:
    """The regimes any target reports, from the least load to the most."""
    reported = {label for result in evaluation.targets.values() for label in result.by_regime}
    return [label for label in (regime_label(index) for index in range(REGIMES)) if label in reported]


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
