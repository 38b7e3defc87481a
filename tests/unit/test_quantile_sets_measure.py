"""``python -m measure.quantile_sets``: every way of serving a set of quantiles is measured and reported."""

from __future__ import annotations

import json
from pathlib import Path

from measure.quantile_sets import FASTER, QUANTILES, main


def test_a_short_run_measures_every_way(tmp_path: Path) -> None:
    """Each way has its training time, a coverage per quantile and no monotone violation.

    Without compiling, on few rows; podlatency's constraints hold in every way.
    """
    out = tmp_path / "quantile-sets.json"
    # One thread: two OpenMP threads would take the core another test worker times its requests on.
    arguments = ["--no-compile", "--one-thread", "--rows", "2000", "--pods", "40", "--out", str(out)]
    assert main(arguments) == 0
    results = {item["way"]: item for item in json.loads(out.read_text())}
    faster = {f"multi_output_tree, {name}" for name in FASTER}
    assert set(results) == {"single", "separate", "one_output_per_tree", "multi_output_tree"} | faster
    assert list(results["single"]["coverage"]) == ["0.9"]
    for way in set(results) - {"single"}:
        assert list(results[way]["coverage"]) == [str(alpha) for alpha in QUANTILES]
    for item in results.values():
        assert item["train_s_1_thread"] > 0
        assert item["monotone_violations"] == 0
        assert "call_us" not in item
