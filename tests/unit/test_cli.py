"""The ``podlatency`` command in process: training options refused by name, versions listed and activated."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from podlatency.bundle import ModelBundle
from podlatency.cli import build_parser, main
from podlatency.registry import ModelRegistry


def exit_status(argv: list[str]) -> int:
    """What ``podlatency`` exits with: its return value, or argparse's exit for a bad flag."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--objective", "quantile", "--alpha", "1.2"],
            "argument --alpha: a quantile must be strictly between 0 and 1",
        ),
        (["--alpha", "0.5"], "--alpha and --quantiles need --objective quantile"),
        (["--quantiles", "0.5,0.99"], "--alpha and --quantiles need --objective quantile"),
        (
            ["--objective", "quantile", "--quantiles", "0.5,1.5"],
            "each quantile must be strictly between 0 and 1",
        ),
    ],
)
def test_training_options_that_cannot_work_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    """A quantile outside (0, 1), or quantile options without the quantile objective: exit 2, no model."""
    assert exit_status(["train", "--synthetic", "1000", "--out", str(tmp_path / "models"), *args]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_versions_lists_the_stored_ones_and_activate_rolls_back(
    tmp_path: Path, small_bundle: ModelBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version stored with --no-activate is listed; activate makes it active, an unknown one is refused."""
    folder = tmp_path / "models"
    first = ModelRegistry(folder).save(small_bundle)
    assert main(["train", "--synthetic", "2000", "--rounds", "5", "--out", str(folder), "--no-activate"]) == 0
    [second] = [version for version in ModelRegistry(folder).versions() if version != first]
    capsys.readouterr()
    assert main(["versions", "--model-dir", str(folder)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line[:18] for line in listed] == sorted(
        [f"* {first}", f"  {second}"], key=lambda line: line != f"* {first}"
    )
    assert main(["activate", second, "--model-dir", str(folder)]) == 0
    assert ModelRegistry(folder).active_version() == second
    assert main(["activate", "0123456789abcdef", "--model-dir", str(folder)]) == 2
    assert "no stored model version '0123456789abcdef'" in capsys.readouterr().err
    (ModelRegistry(folder).bundle_dir(first) / "ttft.ubj").write_bytes(b"truncated")
    assert main(["activate", first, "--model-dir", str(folder)]) == 2, "a version that does not load"
    assert ModelRegistry(folder).active_version() == second


def test_help_reads_as_text_with_every_default() -> None:
    """No reStructuredText in the help, and each train flag with a default says it."""
    parser = build_parser()
    assert "``" not in parser.format_help()
    [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    text = commands.choices["train"].format_help()
    for flag in ("--objective", "--alpha", "--quantiles", "--rounds", "--seed", "--nthread"):
        assert "default" in text.split(flag, 2)[-1].split("\n  -", 1)[0], flag
