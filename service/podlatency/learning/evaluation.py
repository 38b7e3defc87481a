"""Evaluating a stored model on your own observations: figures, per load regime, and what matters.

``podlatency evaluate --samples FILE`` scores a model of a model folder on a samples file (the
format ``podlatency train --samples`` reads, router-shaped rows included: each target is scored on
the rows it was observed on). The figures are the live ones (:mod:`podlatency.learning.live_accuracy`):
median relative error, MAE, and for quantile models coverage and pinball loss; overall and per load
regime (at the primary quantile), and at every quantile a model serves; and each target's feature
importance (the share of the booster's total gain).

:func:`write_report` writes ``metrics.json``, ``report.md`` and, with matplotlib installed (the
``plots`` extra), the pictures: predicted against actual per target, error by load regime, and for a
quantile model its calibration per regime (observed against nominal coverage).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from podlatency.bundle import ModelBundle
from podlatency.engines.predictor import Predictor
from podlatency.learning.live_accuracy import REGIME_MIN_ROWS, Figures, figures_by_regime, regimes_of
from podlatency.learning.training import TrainingSet

FloatArray = npt.NDArray[np.float64]


def feature_importance(booster: xgb.Booster, feature_names: tuple[str, ...]) -> dict[str, float]:
    """Each feature's share of the booster's total split gain, largest first (features never split on: 0)."""
    scores = booster.get_score(importance_type="total_gain")  # one number per feature for this type
    gains = {name: float(value) for name, value in scores.items() if isinstance(value, int | float)}
    total = sum(gains.values()) or 1.0
    # Boosters are saved without feature names: XGBoost calls the columns f0, f1, ...
    shares = {
        name: gains.get(f"f{index}", gains.get(name, 0.0)) / total for index, name in enumerate(feature_names)
    }
    return dict(sorted(shares.items(), key=lambda item: item[1], reverse=True))


def model_feature_importance(bundle: ModelBundle) -> dict[str, dict[str, float]]:
    """Per target, each feature's share of the gain (``/v1/model`` and the evaluation report)."""
    return {
        target: {
            name: round(share, 4) for name, share in feature_importance(booster, bundle.feature_names).items()
        }
        for target, booster in bundle.boosters.items()
    }


@dataclass(frozen=True, slots=True)
class TargetEvaluation:
    """One target's figures on the file's rows it was observed on."""

    overall: Figures
    by_regime: dict[str, Figures]
    feature_importance: dict[str, float]
    by_quantile: dict[str, Figures]
    """A model serving several quantiles: each one's figures, keyed as JSON writes it (``"0.99"``)."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A model's figures on a samples file, and what the pictures draw."""

    model_version: str
    objective: str
    quantile: float | None
    source: str
    targets: dict[str, TargetEvaluation]
    predicted: dict[str, FloatArray]
    actual: dict[str, FloatArray]

    def metrics(self) -> dict[str, object]:
        """What ``metrics.json`` holds (the figures, not the rows)."""
        return {
            "model_version": self.model_version,
            "objective": self.objective,
            "quantile": self.quantile,
            "samples": self.source,
            "targets": {target: asdict(figures) for target, figures in self.targets.items()},
        }


def evaluate_model(bundle: ModelBundle, data: TrainingSet, source: str) -> Evaluation:
    """Score ``bundle`` on ``data``, each target on its observed rows (targets without rows are skipped)."""
    predictor = Predictor(bundle, "cpu", nthread=1)
    alpha = bundle.quantile_alpha if bundle.objective == "quantile" else None
    importance = model_feature_importance(bundle)
    targets: dict[str, TargetEvaluation] = {}
    predicted: dict[str, FloatArray] = {}
    actual: dict[str, FloatArray] = {}
    for target in predictor.targets:
        rows = data.by_target.get(target)
        if rows is None or len(rows) == 0:
            continue
        every = predictor.predict_quantiles(target, rows.features)
        predicted[target] = every if every.ndim == 1 else every[:, bundle.primary_output]
        actual[target] = rows.observed_ms
        by_quantile = {}
        if every.ndim == 2:
            by_quantile = {
                repr(quantile): Figures.of(every[:, column], actual[target], quantile)
                for column, quantile in enumerate(bundle.quantiles)
            }
        targets[target] = TargetEvaluation(
            overall=Figures.of(predicted[target], actual[target], alpha),
            by_regime=figures_by_regime(predicted[target], actual[target], regimes_of(rows.features), alpha),
            feature_importance=importance[target],
            by_quantile=by_quantile,
        )
    return Evaluation(
        model_version=bundle.version,
        objective=bundle.objective,
        quantile=alpha,
        source=source,
        targets=targets,
        predicted=predicted,
        actual=actual,
    )


def report_markdown(evaluation: Evaluation, pictures: list[str]) -> str:
    """``report.md``: the figures as tables, the pictures, and the features that matter most."""
    quantile = evaluation.quantile is not None
    lines = [
        f"# Model {evaluation.model_version} on {evaluation.source}",
        "",
        f"Objective: {evaluation.objective}"
        + (f" (quantile {evaluation.quantile:g})" if quantile else "")
        + ".",
        "Each target is scored on the rows it was observed on (an actual of 0 is not observed).",
        "",
    ]
    header = "| rows | median relative error | MAE ms |" + (" coverage | pinball loss |" if quantile else "")
    rule = "|---:|---:|---:|" + ("---:|---:|" if quantile else "")

    def row(figures: Figures) -> str:
        cells = f"| {figures.rows} | {figures.median_relative_error:.3f} | {figures.mae_ms:.2f} |"
        if figures.coverage is not None and figures.pinball_loss is not None:
            cells += f" {figures.coverage:.3f} | {figures.pinball_loss:.2f} |"
        return cells

    for target, figures in evaluation.targets.items():
        lines += [
            f"## {target.upper()}",
            "",
            f"| | {header[2:]}",
            f"|---{rule}",
            f"| all {row(figures.overall)}",
            "",
        ]
        lines += [
            f"By load regime (at least {REGIME_MIN_ROWS} rows):",
            "",
            f"| regime {header}",
            f"|---{rule}",
        ]
        lines += [f"| {label} {row(regime)}" for label, regime in figures.by_regime.items()]
        if figures.by_quantile:
            lines += ["", "Every served quantile:", "", f"| quantile {header}", f"|---{rule}"]
            lines += [f"| {quantile} {row(each)}" for quantile, each in figures.by_quantile.items()]
        top = list(figures.feature_importance.items())[:5]
        lines += [
            "",
            "What matters most (share of the gain): " + ", ".join(f"{n} {s:.2f}" for n, s in top),
            "",
        ]
    if pictures:
        lines += ["## Pictures", ""] + [f"![{name}]({name})" for name in pictures]
    else:
        lines += [
            "No pictures: they need matplotlib (`pip install 'podlatency[plots]'`; `make test` installs it).",
        ]
    return "\n".join(lines) + "\n"


def write_report(evaluation: Evaluation, out: Path) -> list[Path]:
    """Write ``metrics.json``, the pictures (when matplotlib is installed) and ``report.md``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json"]
    written[0].write_text(json.dumps(evaluation.metrics(), indent=2) + "\n")
    try:
        from podlatency.learning import evaluation_plots  # noqa: PLC0415  (matplotlib: the plots extra)
    except ImportError:
        pictures: list[Path] = []
    else:
        pictures = evaluation_plots.draw(evaluation, out)
    report = out / "report.md"
    report.write_text(report_markdown(evaluation, [picture.name for picture in pictures]))
    return [*written, *pictures, report]
