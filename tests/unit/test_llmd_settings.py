"""llm-d's sidecar variables, as the router's chart sets them, read as podlatency settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from podlatency.errors import SettingsError
from podlatency.settings import Settings

SIDECARS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "llmd_router_sidecars.json").read_text()
)


def test_the_training_sidecar_is_a_trainer_with_its_settings(caplog: pytest.LogCaptureFixture) -> None:
    """The router chart's training server: trainer role, its retrain settings, the /models folder.

    Its scaler paths have no equivalent and are listed once, in one log line.
    """
    with caplog.at_level(logging.INFO, logger="podlatency.settings"):
        settings = Settings.from_env(SIDECARS["training-server"]["env"])
    assert settings.role == "trainer"
    assert (settings.retrain_interval_s, settings.retrain_min_samples) == (10, 100)
    assert (settings.samples_per_bucket, settings.objective) == (500, "mean")
    assert settings.model_dir == Path("/models")
    assert settings.follow_url == ""
    ignored = [
        record.getMessage()
        for record in caplog.records
        if "without a podlatency equivalent" in record.message
    ]
    listed = "LATENCY_TPOT_SCALER_PATH, LATENCY_TTFT_SCALER_PATH"
    assert ignored == [f"llm-d settings without a podlatency equivalent, ignored: {listed}"]


def test_a_prediction_sidecar_follows_the_training_sidecar() -> None:
    """A prediction server: predictor role, following TRAINING_SERVER_URL every MODEL_SYNC_INTERVAL_SEC."""
    settings = Settings.from_env(SIDECARS["prediction-server-1"]["env"])
    assert settings.role == "predictor"
    assert settings.follow_url == "http://localhost:8000"
    assert settings.watch_interval_s == 30
    assert settings.model_dir == Path("/server_models")
    assert (settings.host, settings.port, settings.objective) == ("0.0.0.0", 8001, "mean")  # noqa: S104


def test_podlatency_variables_win_over_their_llmd_twins() -> None:
    """Set both, and the PODLATENCY_* value holds."""
    env = SIDECARS["training-server"]["env"] | {
        "PODLATENCY_RETRAIN_INTERVAL_S": "60",
        "PODLATENCY_OBJECTIVE": "quantile",
        "PODLATENCY_MODEL_DIR": "/elsewhere",
    }
    settings = Settings.from_env(env)
    assert (settings.retrain_interval_s, settings.objective, settings.model_dir) == (
        60,
        "quantile",
        Path("/elsewhere"),
    )
    assert Settings.from_env({"LATENCY_QUANTILE_ALPHA": "0.95"}).quantile_alpha == 0.95


def test_bayesian_ridge_is_served_by_xgboost_and_said_so(caplog: pytest.LogCaptureFixture) -> None:
    """llm-d's other model type has no equivalent: XGBoost takes its place, and the log says so."""
    with caplog.at_level(logging.INFO, logger="podlatency.settings"):
        Settings.from_env({"SERVER_TYPE": "training", "LATENCY_MODEL_TYPE": "bayesian_ridge"})
    assert "LATENCY_MODEL_TYPE=bayesian_ridge (ignored: podlatency predicts with XGBoost)" in caplog.text


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LATENCY_MODEL_TYPE": "lightgbm"}, "LATENCY_MODEL_TYPE='lightgbm' cannot be honoured"),
        ({"LATENCY_OBJECTIVE_TYPE": "median"}, "LATENCY_OBJECTIVE_TYPE='median' cannot be honoured"),
        ({"SERVER_TYPE": "gateway"}, "SERVER_TYPE='gateway' cannot be honoured"),
        (
            {
                "SERVER_TYPE": "training",
                "LATENCY_TTFT_MODEL_PATH": "/a/ttft.joblib",
                "LATENCY_TPOT_MODEL_PATH": "/b/t.joblib",
            },
            "LATENCY_TTFT_MODEL_PATH=/a/ttft.joblib, LATENCY_TPOT_MODEL_PATH=/b/t.joblib cannot be honoured",
        ),
        ({"SERVER_TYPE": "prediction-1", "TRAINING_SERVER_URL": "localhost:8000"}, "PODLATENCY_FOLLOW_URL"),
    ],
)
def test_what_cannot_be_honoured_stops_start_up_by_name(env: dict[str, str], named: str) -> None:
    """A model type, objective or server type podlatency has not, or model paths in two folders."""
    with pytest.raises(SettingsError, match=named.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_without_llmd_variables_nothing_changes() -> None:
    """An environment of PODLATENCY_* variables alone reads as before."""
    assert Settings.from_env({"PODLATENCY_ROLE": "predictor"}) == Settings(role="predictor")
