"""Training from the generator and from recorded samples; bad sample files write nothing."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from measure import calibration
from measure.calibration import coverage_by_quarter
from podlatency.cli import main
from podlatency.errors import TrainingDataError
from podlatency.learning.sample_files import read_samples
from podlatency.learning.samples import SampleStore
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.learning.workload import generate, single_regime_observations
from podlatency.registry import ModelRegistry
from podlatency.schema import ObservedSample


def sample_frame(rows: int = 400) -> pd.DataFrame:
    sample = generate(rows, seed=4)
    frame = pd.DataFrame(sample.rows())
    frame["actual_ttft_ms"] = sample.ttft_ms
    frame["actual_tpot_ms"] = sample.tpot_ms
    return frame


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_samples_file_trains_a_model(tmp_path: Path, suffix: str) -> None:
    """CSV and Parquet files of recorded observations train a bundle that `serve` can load."""
    path = tmp_path / f"samples{suffix}"
    frame = sample_frame()
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    out = tmp_path / "models"
    assert main(["train", "--samples", str(path), "--out", str(out), "--rounds", "20"]) == 0
    bundle = ModelRegistry(out).load_active()
    assert bundle is not None
    assert bundle.training_rows == 400
    assert set(bundle.metrics) == {"ttft", "tpot"}


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda frame: frame.drop(columns=["prefix_cache_score"]), "prefix_cache_score"),
        (lambda frame: frame.drop(columns=["actual_tpot_ms"]), "actual_tpot_ms"),
        (lambda frame: frame.assign(num_request_waiting=["many"] * len(frame)), "num_request_waiting"),
        (lambda frame: frame.assign(actual_ttft_ms=np.nan), "actual_ttft_ms"),
        (lambda frame: frame.assign(kv_cache_percentage=1.5), "kv_cache_percentage"),
        (lambda frame: frame.assign(pod_type="router"), "pod_type"),
    ],
)
def test_bad_sample_files_name_the_column_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: object, named: str
) -> None:
    """A missing, non-numeric or out-of-range column is reported by name and no model folder appears."""
    path = tmp_path / "samples.csv"
    mutate(sample_frame()).to_csv(path, index=False)  # type: ignore[operator]
    out = tmp_path / "models"
    assert main(["train", "--samples", str(path), "--out", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_unknown_format_and_missing_file_are_refused(tmp_path: Path) -> None:
    """Only .csv and .parquet are read, and a missing file says so."""
    (tmp_path / "samples.txt").write_text("x")
    with pytest.raises(TrainingDataError, match="unknown sample format"):
        read_samples(tmp_path / "samples.txt")
    with pytest.raises(TrainingDataError, match="no such file"):
        read_samples(tmp_path / "absent.csv")


def test_quantile_objective_records_coverage_near_alpha() -> None:
    """A p90 model covers about 90% of held-out TTFTs and records its pinball loss."""
    bundle = train_bundle(
        synthetic_training_set(8_000, seed=2), TrainingOptions(objective="quantile", quantile_alpha=0.9), "t"
    )
    ttft = bundle.metrics["ttft"]
    assert 0.85 <= ttft["coverage"] <= 0.95
    assert ttft["pinball_loss"] > 0
    assert bundle.quantile_alpha == 0.9


def test_mean_model_learns_the_workload() -> None:
    """The default objective predicts held-out TTFT within 25% mean absolute percentage error."""
    bundle = train_bundle(synthetic_training_set(20_000), TrainingOptions(), "t")
    assert bundle.metrics["ttft"]["mape"] < 0.25
    assert bundle.metrics["tpot"]["mape"] < 0.15


def test_quantile_coverage_holds_on_small_single_regime_data(tmp_path: Path) -> None:
    """On 3,000 single-regime requests the served quantile set holds in each quarter of load.

    The primary p90 covers 85-95% of fresh actuals in every quarter and the p99 at least 96%, for both
    targets. Every training row is kept (none lost to a regime's share).

    The data set is one draw; ``python -m measure.calibration`` measures the spread over many.
    """
    rows, _ = single_regime_observations(3_000, seed=3)
    store = SampleStore(tmp_path)
    store.add([msgspec.convert(row, ObservedSample) for row in rows])
    assert store.counts()["tpot_training"] == 2_700, "the one regime keeps all its training rows"
    bundle = train_bundle(store.training_set(), calibration.SET, "t")

    fresh, in_flight = single_regime_observations(20_000, seed=4)
    for target, by_quantile in coverage_by_quarter(bundle, fresh, in_flight).items():
        for quarter, covered in enumerate(by_quantile[0.9]):
            assert 0.85 <= covered <= 0.95, f"{target} quarter {quarter}: p90 coverage {covered:.3f}"
        for quarter, covered in enumerate(by_quantile[0.99]):
            assert covered >= 0.96, f"{target} quarter {quarter}: p99 coverage {covered:.3f}"
