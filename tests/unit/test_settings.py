"""Settings come from PODLATENCY_* variables, flags override them, and bad values are named."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest

from podlatency.errors import SettingsError
from podlatency.settings import ENV_PREFIX, Settings


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
        ("PODLATENCY_LEASE_RETRY_PERIOD_S", "0"),
        ("PODLATENCY_LEASE_RENEW_DEADLINE_S", "2"),  # not more than 1.2 x the 2 s retry period
        ("PODLATENCY_LEASE_DURATION_S", "10"),  # not more than the 10 s renew deadline
        ("PODLATENCY_PUBLISH_URL", "10.0.0.1:8000"),
        ("PODLATENCY_FOLLOW_URL", "localhost:8000"),
        ("PODLATENCY_QUANTILES", "0.5,0.9,1.0"),
        ("PODLATENCY_QUANTILES", "0.5,p99"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    """A value no process could use is refused with the variable's name."""
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_a_predictor_follows_one_source_and_serves_the_primary_quantile() -> None:
    """A trainer URL and a rollout ConfigMap together are refused; the served set holds the primary."""
    with pytest.raises(SettingsError, match="PODLATENCY_FOLLOW_URL"):
        Settings.from_env(
            {"PODLATENCY_FOLLOW_URL": "http://localhost:8000", "PODLATENCY_ROLLOUT_CONFIGMAP": "pl"}
        )
    settings = Settings.from_env({"PODLATENCY_QUANTILES": "0.99, 0.5", "PODLATENCY_QUANTILE_ALPHA": "0.8"})
    assert settings.served_quantiles == (0.5, 0.8, 0.99)


def test_every_field_is_read_as_its_declared_type(tmp_path: Path) -> None:
    """Each PODLATENCY_ variable becomes the field's type: no field is left as a string by mistake."""
    settings = Settings.from_env(
        {
            "PODLATENCY_SAMPLES_PER_BUCKET": "7",
            "PODLATENCY_RETRAIN_MIN_SAMPLES": "9",
            "PODLATENCY_RETRAIN_INTERVAL_S": "0.5",
            "PODLATENCY_BATCHING": "off",
            "PODLATENCY_KEEP_VERSIONS": "2",
            "PODLATENCY_LOG_LEVEL": "WARNING",
        }
    )
    assert (settings.samples_per_bucket, settings.retrain_min_samples, settings.keep_versions) == (7, 9, 2)
    assert (settings.retrain_interval_s, settings.batching, settings.log_level) == (0.5, False, "warning")


def test_bad_booleans_and_log_levels_are_refused() -> None:
    """A boolean that is not true/false and an unknown log level name their variables."""
    with pytest.raises(SettingsError, match="PODLATENCY_BATCHING"):
        Settings.from_env({"PODLATENCY_BATCHING": "maybe"})
    with pytest.raises(SettingsError, match="PODLATENCY_LOG_LEVEL"):
        Settings.from_env({"PODLATENCY_LOG_LEVEL": "loud"})


def documented_settings() -> dict[str, str]:
    """docs/configuration.md's table: each ``PODLATENCY_*`` variable and its documented default."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `(PODLATENCY_[A-Z0-9_]+)` \| ([^|]*) \|", text, flags=re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def test_the_configuration_doc_lists_every_setting_and_no_other() -> None:
    """docs/configuration.md has a row for every Settings field and for nothing else.

    Each default it shows as a literal is the field's default; an empty default is shown as what it
    means (``MODEL_DIR/compiled``, ``http://HOST:PORT``), and words or paths are not compared.
    """
    documented = documented_settings()
    fields = {ENV_PREFIX + field.name.upper(): field for field in dataclasses.fields(Settings)}
    assert sorted(documented) == sorted(fields), "documented and defined variables differ"
    for name, shown in documented.items():
        default = fields[name].default
        literal = re.fullmatch(r"`([^`]*)`", shown)
        if literal is None or isinstance(default, Path) or default in ("", dataclasses.MISSING):
            continue  # described in words or by what empty means: nothing to compare
        value = literal.group(1)
        if isinstance(default, bool):
            assert value == str(default).lower(), name
        elif isinstance(default, (int, float)):
            assert float(value) == float(default), name
        else:
            assert value == str(default), name


def test_a_misspelt_variable_is_named_with_the_closest_setting(caplog: pytest.LogCaptureFixture) -> None:
    """An unknown PODLATENCY_* variable is logged once with the setting it was probably meant to be."""
    with caplog.at_level(logging.WARNING, logger="podlatency.settings"):
        settings = Settings.from_env(
            {"PODLATENCY_ENGNE": "xgboost", "PODLATENCY_ENGINE": "auto", "HOME": "/"}
        )
    assert settings.engine == "auto"
    assert [record.getMessage() for record in caplog.records] == [
        "PODLATENCY_ENGNE is not a podlatency setting and is ignored; did you mean PODLATENCY_ENGINE?"
    ]
