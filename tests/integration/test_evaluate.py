"""``podlatency evaluate`` as a user runs it: a stored model scored on a samples file, report and pictures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from podlatency.learning.workload import router_observations
from podlatency.schema import FEATURE_NAMES
from tests.integration.test_cli import run_cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def router_rows_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Router-shaped rows (TTFT-only and TPOT-only) as a Parquet samples file."""
    path = tmp_path_factory.mktemp("observed") / "router.parquet"
    rows = router_observations(3000, seed=21)
    frame = pd.DataFrame([{key: value for key, value in row.items() if key != "timestamp"} for row in rows])
    frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("objective", ["mean", "quantile"])
def test_evaluate_writes_figures_report_and_pictures(
    tmp_path: Path, router_rows_file: Path, objective: str
) -> None:
    """Per target figures, the same per load regime, what matters most, and every picture as PNG.

    A quantile model (the default set) also has each served quantile's figures.
    """
    models = tmp_path / "models"
    trained = run_cli("train", "--synthetic", "5000", "--objective", objective, "--out", str(models))
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "report"
    result = run_cli(
        "evaluate", "--samples", str(router_rows_file), "--model-dir", str(models), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == objective
    assert metrics["quantile"] == (0.9 if objective == "quantile" else None)
    for target in ("ttft", "tpot"):
        figures = metrics["targets"][target]
        assert figures["overall"]["rows"] == 3000, "each target scored on its own rows"
        assert 0 < figures["overall"]["median_relative_error"] < 1
        assert (figures["overall"]["coverage"] is None) == (objective == "mean")
        assert sum(regime["rows"] for regime in figures["by_regime"].values()) <= 3000
        assert len(figures["by_regime"]) >= 5
        importance = figures["feature_importance"]
        assert set(importance) == set(FEATURE_NAMES)
        assert sum(importance.values()) == pytest.approx(1.0, abs=0.01)
        by_quantile = figures["by_quantile"]
        assert list(by_quantile) == (["0.5", "0.9", "0.95", "0.99"] if objective == "quantile" else [])
        if objective == "quantile":
            assert by_quantile["0.9"] == figures["overall"], "the primary is the overall figure"
            coverages = [each["coverage"] for each in by_quantile.values()]
            assert coverages == sorted(coverages), "quantiles never cross"
    assert max(metrics["targets"]["ttft"]["feature_importance"].items(), key=lambda item: item[1])[0] in {
        "input_token_length", "uncached_input_tokens", "num_request_waiting", "prefill_tokens_in_flight",
    }, "TTFT is driven by prompt work and the queue"  # fmt: skip

    pictures = ["predicted-vs-actual-ttft.png", "predicted-vs-actual-tpot.png", "error-by-regime.png"]
    if objective == "quantile":
        pictures.append("calibration.png")
    for name in pictures:
        content = (out / name).read_bytes()
        assert content.startswith(PNG), name
        assert len(content) > 10_000, f"{name} draws something"
    assert not (out / "calibration.png").exists() or objective == "quantile"
    report = (out / "report.md").read_text()
    assert "## TTFT" in report
    assert "By load regime" in report
    assert "What matters most" in report
    assert ("Every served quantile" in report) == (objective == "quantile")
    assert all(f"]({name})" in report for name in pictures)
    assert "median relative error" in result.stdout


def test_without_matplotlib_the_report_says_how_to_get_pictures(
    tmp_path: Path, router_rows_file: Path
) -> None:
    """Where matplotlib cannot be imported, the figures are still written and the command says why not."""
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named matplotlib")\n')
    models = tmp_path / "models"
    assert run_cli("train", "--synthetic", "3000", "--out", str(models)).returncode == 0
    out = tmp_path / "report"
    result = run_cli(
        "evaluate", "--samples", str(router_rows_file), "--model-dir", str(models), "--out", str(out),
        env={"PYTHONPATH": str(shadow.parent)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["metrics.json", "report.md"]
    assert "podlatency[plots]" in (out / "report.md").read_text()
    assert "pip install 'podlatency[plots]'" in result.stderr


def test_evaluate_refuses_what_it_cannot_score(tmp_path: Path, router_rows_file: Path) -> None:
    """No model, an unknown version, a bad samples file: exit 2 with a message, and nothing written."""
    out = tmp_path / "report"
    empty = run_cli(
        "evaluate",
        "--samples",
        str(router_rows_file),
        "--model-dir",
        str(tmp_path / "none"),
        "--out",
        str(out),
    )
    assert empty.returncode == 2
    assert "no active model" in empty.stderr
    models = tmp_path / "models"
    assert run_cli("train", "--synthetic", "3000", "--out", str(models)).returncode == 0
    unknown = run_cli(
        "evaluate", "--samples", str(router_rows_file), "--model-dir", str(models), "--version", "beef",
        "--out", str(out),
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "no stored model version 'beef'" in unknown.stderr
    broken = tmp_path / "broken.csv"
    broken.write_text("kv_cache_percentage,actual_ttft_ms\n0.5,10\n")
    bad = run_cli("evaluate", "--samples", str(broken), "--model-dir", str(models), "--out", str(out))
    assert bad.returncode == 2
    assert "missing column" in bad.stderr
    assert not out.exists()
