"""llm-d's latency-predictor settings, read where podlatency has an equivalent.

The llm-d router's chart runs its predictor as sidecars configured with llm-d's variables: the
training server with ``SERVER_TYPE=training`` and ``LATENCY_*`` keys, each prediction server with
``SERVER_TYPE=prediction-<n>``, ``TRAINING_SERVER_URL``, ``MODEL_SYNC_INTERVAL_SEC`` and
``LOCAL_*_MODEL_PATH``. So that swapping the two images is enough, :func:`translated` turns those into
``PODLATENCY_*`` variables before the settings are read (:meth:`podlatency.settings.Settings.from_env`):

- ``SERVER_TYPE``: ``training`` is the trainer role, ``prediction-<n>`` the predictor role;
- ``LATENCY_OBJECTIVE_TYPE``, ``LATENCY_QUANTILE_ALPHA``, ``LATENCY_RETRAINING_INTERVAL_SEC``,
  ``LATENCY_MIN_SAMPLES_FOR_RETRAIN``, ``LATENCY_MAX_TRAINING_DATA_SIZE_PER_BUCKET``: the objective,
  the primary quantile, the retrain interval, the samples a retrain waits for, and the rows kept per
  regime;
- the model paths (``LATENCY_TTFT_MODEL_PATH`` on the trainer, ``LOCAL_TTFT_MODEL_PATH`` on a
  predictor): their folder is the model folder;
- on a predictor, ``TRAINING_SERVER_URL`` is the trainer it follows over HTTP
  (:mod:`podlatency.http_follow`) every ``MODEL_SYNC_INTERVAL_SEC``; ``PREDICT_HOST`` and
  ``PREDICT_PORT`` are where it listens.

Where both are set, the ``PODLATENCY_*`` variable wins. llm-d variables without an equivalent (the
scaler and gated-model paths, ``LATENCY_MODEL_TYPE=bayesian_ridge``, whose place an XGBoost model
takes, the ensemble settings) are returned by name, for one log line at start-up. A value podlatency
cannot honour (``LATENCY_MODEL_TYPE=lightgbm``, an objective it does not know, model paths in two
folders) is a :class:`~podlatency.errors.SettingsError` naming the variable.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from podlatency.errors import SettingsError

DIRECT = {
    "LATENCY_OBJECTIVE_TYPE": "PODLATENCY_OBJECTIVE",
    "LATENCY_QUANTILE_ALPHA": "PODLATENCY_QUANTILE_ALPHA",
    "LATENCY_RETRAINING_INTERVAL_SEC": "PODLATENCY_RETRAIN_INTERVAL_S",
    "LATENCY_MIN_SAMPLES_FOR_RETRAIN": "PODLATENCY_RETRAIN_MIN_SAMPLES",
    "LATENCY_MAX_TRAINING_DATA_SIZE_PER_BUCKET": "PODLATENCY_SAMPLES_PER_BUCKET",
}
"""llm-d variables that mean what a podlatency variable means, value for value."""

PREDICTOR = {
    "TRAINING_SERVER_URL": "PODLATENCY_FOLLOW_URL",
    "MODEL_SYNC_INTERVAL_SEC": "PODLATENCY_WATCH_INTERVAL_S",
    "PREDICT_HOST": "PODLATENCY_HOST",
    "PREDICT_PORT": "PODLATENCY_PORT",
}
"""What a prediction server's variables mean (a trainer follows no one and listens where it is told)."""

MODEL_PATHS = {
    "trainer": ("LATENCY_TTFT_MODEL_PATH", "LATENCY_TPOT_MODEL_PATH"),
    "predictor": ("LOCAL_TTFT_MODEL_PATH", "LOCAL_TPOT_MODEL_PATH"),
}
"""The model files of each role; their folder is the model folder."""

MODEL_TYPES = {"xgboost": "", "bayesian_ridge": "ignored: podlatency predicts with XGBoost"}
"""``LATENCY_MODEL_TYPE`` values podlatency serves (any other stops start-up)."""

OTHER_PREFIXES = ("LATENCY_", "LOCAL_")
"""llm-d's other variables: listed as ignored when podlatency has no equivalent."""


def role_of(environ: Mapping[str, str]) -> str | None:
    """The role ``SERVER_TYPE`` names (``None`` when it is not set)."""
    server_type = environ.get("SERVER_TYPE")
    if server_type is None:
        return None
    if server_type == "training":
        return "trainer"
    if server_type.startswith("prediction"):
        return "predictor"
    raise SettingsError(
        f"SERVER_TYPE={server_type!r} cannot be honoured: llm-d's are training and prediction-<n>"
    )


def translated(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``environ`` with llm-d's settings as ``PODLATENCY_*`` variables (those already set win).

    Also the llm-d variables that have no equivalent, sorted (for one log line).
    """
    if not any(
        name == "SERVER_TYPE" or name in PREDICTOR or name.startswith(OTHER_PREFIXES) for name in environ
    ):
        return dict(environ), []
    role = role_of(environ)
    mapped: dict[str, str] = {}
    if role is not None:
        mapped["PODLATENCY_ROLE"] = role
    used = {name for name in DIRECT if name in environ}
    mapped |= {DIRECT[name]: environ[name] for name in used}
    if role != "trainer":
        predictor_names = {name for name in PREDICTOR if name in environ}
        mapped |= {PREDICTOR[name]: environ[name] for name in predictor_names}
        used |= predictor_names
    folder, path_names = model_folder(environ, role or "predictor")
    if folder is not None:
        mapped["PODLATENCY_MODEL_DIR"] = folder
    used |= path_names
    objective = environ.get("LATENCY_OBJECTIVE_TYPE")
    if objective is not None and objective not in ("mean", "quantile"):
        raise SettingsError(
            f"LATENCY_OBJECTIVE_TYPE={objective!r} cannot be honoured: podlatency predicts mean or quantile"
        )
    model_type = environ.get("LATENCY_MODEL_TYPE")
    ignored: list[str] = []
    if model_type is not None:
        if model_type not in MODEL_TYPES:
            raise SettingsError(
                f"LATENCY_MODEL_TYPE={model_type!r} cannot be honoured: podlatency predicts with XGBoost "
                "(set xgboost, or leave it out)"
            )
        if MODEL_TYPES[model_type]:
            ignored.append(f"LATENCY_MODEL_TYPE={model_type} ({MODEL_TYPES[model_type]})")
        used.add("LATENCY_MODEL_TYPE")
    ignored += sorted(name for name in environ if name.startswith(OTHER_PREFIXES) and name not in used)
    result = dict(environ)
    for name, value in mapped.items():
        result.setdefault(name, value)
    return result, ignored


def model_folder(environ: Mapping[str, str], role: str) -> tuple[str | None, set[str]]:
    """The folder of the role's model paths (``None`` when none is set), and the variables that said it."""
    names = [name for name in MODEL_PATHS[role] if name in environ]
    folders = {posixpath.dirname(environ[name]) for name in names}
    if len(folders) > 1:
        listed = ", ".join(f"{name}={environ[name]}" for name in names)
        raise SettingsError(f"{listed} cannot be honoured: podlatency keeps both models in one folder")
    folder = (folders.pop() or ".") if folders else None
    return folder, set(names)
