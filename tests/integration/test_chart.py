"""The Helm chart, checked by the real Helm library (helm-sdkpy's Lint, which renders the templates).

Lint takes no values file, so each scenario is linted as a copy of the chart whose values.yaml has
the scenario's values merged in. Lint's messages come back without text; severity 3 is an error.
Installing against a Kubernetes API emulator is tested in test_chart_install.py.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_sdkpy import Configuration
from helm_sdkpy.chart import Lint

CHART = Path(__file__).resolve().parents[2] / "charts" / "podlatency"
ERROR = 3


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def lint_errors(chart: Path) -> list[dict[str, Any]]:
    result = asyncio.run(Lint(Configuration()).run(str(chart)))
    return [message for message in result["Messages"] if message["Severity"] >= ERROR]


def chart_with(tmp_path: Path, values: dict[str, Any]) -> Path:
    copy = tmp_path / "podlatency"
    shutil.copytree(CHART, copy)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    (copy / "values.yaml").write_text(yaml.safe_dump(deep_merge(defaults, values)))
    return copy


def test_default_chart_lints_clean() -> None:
    """Helm lints the chart with its default (GPU) values without an error."""
    assert lint_errors(CHART) == []


@pytest.mark.parametrize("scenario", ["cpu-values.yaml", "full-values.yaml"])
def test_scenarios_lint_clean(tmp_path: Path, scenario: str) -> None:
    """The CPU-only and the everything-on scenario (Jaeger, Locust, HPA, ...) render and lint clean."""
    values = yaml.safe_load((CHART / "ci" / scenario).read_text())
    assert lint_errors(chart_with(tmp_path, values)) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"replicaCount": "two"},
        {"podlatency": {"device": "tpu"}},
        {"gpu": {"count": 0}},
        {"loadtest": {"runTime": "five minutes"}},
        {"surprise": True},
    ],
)
def test_schema_rejects_bad_values(tmp_path: Path, bad: dict[str, Any]) -> None:
    """values.schema.json refuses wrong types, values out of range and unknown top-level keys."""
    assert lint_errors(chart_with(tmp_path, bad)) != []


def test_broken_template_is_caught(tmp_path: Path) -> None:
    """Lint renders optional templates when enabled: an error there is reported (the check can fail)."""
    copy = chart_with(tmp_path, {"jaeger": {"enabled": True}})
    (copy / "templates" / "jaeger.yaml").write_text(
        "{{- if .Values.jaeger.enabled }}\n{{ .Values.nope.deeper }}\n{{- end }}\n"
    )
    assert lint_errors(copy) != []
