"""Settings come from PODLATENCY_* variables, flags override them, and bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from podlatency.errors import SettingsError
from podlatency.settings import Settings


def test_environment_is_read_with_one_prefix(tmp_path: Path) -> None:
    """Every field is read from its PODLATENCY_ variable."""
    settings = Settings.from_env(
        {"PODLATENCY_PORT": "9001", "PODLATENCY_MODEL_DIR": str(tmp_path), "PODLATENCY_DEVICE": "CPU"}
    )
    assert (settings.port, settings.model_dir, settings.device) == (9001, tmp_path, "cpu")


def test_overrides_win_over_environment() -> None:
    """Explicit overrides (CLI flags) replace environment values."""
    assert Settings.from_env({"PODLATENCY_PORT": "9001"}, port=9002).port == 9002


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PODLATENCY_PORT", "eighty"),
        ("PODLATENCY_PORT", "70000"),
        ("PODLATENCY_DEVICE", "tpu"),
        ("PODLATENCY_NTHREAD", "-1"),
        ("PODLATENCY_QUANTILE_ALPHA", "1.5"),
        ("PODLATENCY_MAX_PODS", "0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    """A value no process could use is refused with the variable's name."""
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
