"""The one settings object: built once from ``PODLATENCY_*`` environment variables, then passed down.

Each field documents itself; ``podlatency serve --help`` and docs/configuration.md list the same
names. Command-line flags override the environment (see :mod:`podlatency.cli`).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

from podlatency import llmd_settings
from podlatency.errors import SettingsError

ENV_PREFIX = "PODLATENCY_"

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
Objective = Literal["auto", "mean", "quantile"]
Role = Literal["both", "predictor", "trainer"]
Engine = Literal["auto", "xgboost"]
LogLevel = Literal["debug", "info", "warning", "error"]


def default_model_dir() -> Path:
    """The per-user cache folder the embedded default model is trained into."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "podlatency" / "models"


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime configuration of one podlatency process."""

    role: Role = "both"
    """``predictor`` serves predictions and follows the model folder; ``trainer`` takes samples and
    retrains; ``both`` (the single-process default) does all of it."""

    watch_interval_s: float = 2.0
    """Seconds between checks of the model folder's active version (0 = never)."""

    host: str = "127.0.0.1"
    """Address ``podlatency serve`` binds to (``0.0.0.0`` inside a container)."""

    port: int = 8000
    """TCP port ``podlatency serve`` listens on."""

    workers: int = 1
    """Server worker processes; each loads its own copy of the model."""

    threads: int = 16
    """Worker threads that run the sync handlers in each process.

    The batched routes need none (they queue their rows from the event loop); ``/predict/bulk``, the
    seed designs and every route with batching off run on these: a waiting thread costs nothing but
    memory, and more of them make bigger batches (docs/performance.md).
    """

    model_dir: Path = field(default_factory=default_model_dir)
    """Folder of model bundles and the active-version pointer; the embedded default is trained here."""

    device: Device = "auto"
    """Where XGBoost predicts: ``cuda`` needs a GPU, ``auto`` uses one when XGBoost can."""

    gpu_min_rows: int = 256
    """On ``cuda``, calls with fewer rows run on the CPU (a guess until ``measure.gpu_bench`` measures)."""

    nthread: int = 1
    """OpenMP threads per XGBoost predict call (0 = all cores); 1 is fastest under concurrency."""

    engine: Engine = "auto"
    """CPU predict engine: ``auto`` compiles each model to native code in the background and switches
    to it once its outputs equal XGBoost's (XGBoost serves until then, and whenever compiling fails);
    ``xgboost`` never compiles."""

    compiler: str = "gcc"
    """C compiler for compiled trees (a gcc or clang command or path)."""

    compiled_dir: str = ""
    """Where compiled models are cached, per version and platform (empty: ``compiled/`` in the model dir)."""

    max_pods: int = 1024
    """Most pods one ``/v1/predict`` request may carry."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body accepted; a bigger one is answered 413 before it is read."""

    max_in_flight: int = 32
    """Prediction requests in progress per process beyond which new ones get 503 at once (0 = no limit)."""

    api_token: str = field(default="", repr=False)
    """Bearer token the write routes (samples, retrain, reload, flush) require; empty = none required."""

    router_samples_without_token: bool = False
    """Take llm-d's ``POST /add_training_data_bulk`` without the bearer token: the llm-d router posts its
    observations with none. Limit who reaches trainers some other way (a NetworkPolicy)."""

    batching: bool = True
    """Coalesce concurrent requests' rows into one predict call per target."""

    batch_max_rows: int = 4096
    """Most rows in one coalesced predict call."""

    batch_max_wait_ms: float = 0.0
    """Extra time a batch leader waits to fill its batch when others are queued (0 = never wait)."""

    samples_per_bucket: int = 2000
    """Observed samples kept per regime (queue depth x KV-cache use x prefix-cache score)."""

    retrain_interval_s: float = 60.0
    """Seconds between retraining attempts from observed samples (0 = never retrain on a timer)."""

    retrain_min_samples: int = 500
    """New samples needed before a retraining attempt."""

    retrain_tolerance: float = 0.05
    """A candidate is published unless a target's held-out error is worse by more than this share."""

    keep_versions: int = 5
    """Model versions kept in the model folder (the active one always among them)."""

    live_window: int = 5000
    """Trainers: observed rows per target over which the serving model's live accuracy is measured."""

    drift_min_rows: int = 500
    """Trainers: rows a target's live window needs before drift can be flagged (docs/models.md)."""

    default_samples: int = 20_000
    """Synthetic rows the embedded default model is trained on when the model folder is empty."""

    objective: Objective = "auto"
    """What models predict, for the embedded default and every retrain: the ``mean`` latency (squared
    error) or a ``quantile`` of it. ``auto`` keeps the active model's objective and quantile through
    retraining (``mean`` for the embedded default); ``mean`` or ``quantile`` sets it from the next
    retrain on."""

    quantile_alpha: float = 0.9
    """The primary quantile when ``objective`` is ``quantile``: what ``ttft_ms``/``tpot_ms`` and the llm-d
    routes answer (llm-d's ``/status`` reports it for mean models too)."""

    quantiles: str = "0.5,0.9,0.95,0.99"
    """Comma-separated quantiles a quantile model serves (the primary is always among them): one booster
    per target predicts them all, ``/v1/predict`` answers those asked for in ``quantiles``, and the llm-d
    routes give the lowest and highest as bounds. One value serves the primary alone."""

    trace_slow_ms: str = "auto"
    """Server time above which a request's trace is kept even when the head sampler passed it over:
    ``auto`` (each route's rolling p99 over about the last minute), a number of milliseconds, or
    ``off``. Failed requests (5xx, shed) are always kept; only with an OTLP endpoint set."""

    log_level: LogLevel = "info"
    """Log level of the server process (debug, info, warning, error)."""

    extensions: str = ""
    """Routes to serve beside podlatency's own: comma-separated ``module:attribute`` import paths, each
    naming a function that takes the :class:`~podlatency.runtime.Runtime` and returns a
    :class:`~podlatency.web.extensions.Extension`. Empty by default, as in the chart. The load
    comparison serves the seed post's endpoint designs this way (``measure.seed_designs:extension``)."""

    rollout_configmap: str = ""
    """Kubernetes ConfigMap that declares the model version to serve; empty = follow the model folder."""

    follow_url: str = ""
    """A trainer's base URL to follow over HTTP (e.g. ``http://localhost:8000``): every
    ``watch_interval_s`` its active version is read, downloaded, checked against its SHA-256 and swapped
    in. Empty = follow the model folder (or the rollout ConfigMap); not both."""

    namespace: str = ""
    """Namespace of the rollout ConfigMap and Lease; empty = this pod's own (else ``default``)."""

    pod_name: str = ""
    """This pod's name (from the downward API): the leader-election identity."""

    publish_url: str = ""
    """Base URL other pods fetch this trainer's model archives from (e.g. ``http://10.1.2.3:8000``)."""

    lease_duration_s: int = 15
    """Seconds a trainer's leadership lasts without renewal; a standby takes over after it."""

    lease_renew_deadline_s: int = 10
    """Seconds the leader keeps trying to renew before it steps down (< lease duration)."""

    lease_retry_period_s: int = 2
    """Seconds between leader-election attempts (>= 1; renew deadline > 1.2 x this)."""

    watch_timeout_s: int = 300
    """Seconds the API server keeps one ConfigMap watch open; a failed rollout is retried between watches."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``PODLATENCY_*`` variables, then apply explicit overrides (CLI flags).

        llm-d's latency-predictor variables are read where podlatency has an equivalent
        (:mod:`podlatency.llmd_settings`); a ``PODLATENCY_*`` variable wins over its llm-d twin.
        """
        env, ignored = llmd_settings.translated(os.environ if environ is None else environ)
        if ignored:
            logger.info("llm-d settings without a podlatency equivalent, ignored: %s", ", ".join(ignored))
        kinds = get_type_hints(cls)
        warn_unknown(
            env, {ENV_PREFIX + settings_field.name.upper() for settings_field in dataclasses.fields(cls)}
        )
        values: dict[str, object] = {}
        for settings_field in dataclasses.fields(cls):
            name = ENV_PREFIX + settings_field.name.upper()
            if name in env:
                values[settings_field.name] = _parse(kinds[settings_field.name], name, env[name])
        values.update({key: value for key, value in overrides.items() if value is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    @property
    def compiled_folder(self) -> Path:
        """Where compiled models are cached (``PODLATENCY_COMPILED_DIR``, else inside the model folder)."""
        return Path(self.compiled_dir).expanduser() if self.compiled_dir else self.model_dir / "compiled"

    @property
    def extension_paths(self) -> tuple[str, ...]:
        """``PODLATENCY_EXTENSIONS`` as a tuple of ``module:attribute`` import paths."""
        return tuple(path.strip() for path in self.extensions.split(",") if path.strip())

    @property
    def served_quantiles(self) -> tuple[float, ...]:
        """The quantiles a quantile model trained here serves: ``quantiles`` and the primary, ascending."""
        return tuple(sorted({self.quantile_alpha, *_numbers(self.quantiles)}))

    def validate(self) -> None:
        """Refuse values no process could run with, naming the variable."""
        checks: list[tuple[bool, str, str]] = [
            (1 <= self.port <= 65535, "port", "must be 1..65535"),
            (self.workers >= 1, "workers", "must be >= 1"),
            (self.threads >= 1, "threads", "must be >= 1"),
            (self.nthread >= 0, "nthread", "must be >= 0 (0 = all cores)"),
            (self.gpu_min_rows >= 0, "gpu_min_rows", "must be >= 0"),
            (self.max_pods >= 1, "max_pods", "must be >= 1"),
            (self.max_body_bytes >= 1024, "max_body_bytes", "must be >= 1024"),
            (self.max_in_flight >= 0, "max_in_flight", "must be >= 0 (0 = no limit)"),
            (self.batch_max_rows >= self.max_pods, "batch_max_rows", "must be >= PODLATENCY_MAX_PODS"),
            (0.0 <= self.batch_max_wait_ms <= 100.0, "batch_max_wait_ms", "must be 0..100"),
            (self.default_samples >= 1000, "default_samples", "must be >= 1000"),
            (self.samples_per_bucket >= 1, "samples_per_bucket", "must be >= 1"),
            (self.retrain_interval_s >= 0, "retrain_interval_s", "must be >= 0 (0 = off)"),
            (self.watch_interval_s >= 0, "watch_interval_s", "must be >= 0 (0 = off)"),
            (self.role in get_args(Role), "role", f"must be one of {get_args(Role)}"),
            (self.retrain_min_samples >= 1, "retrain_min_samples", "must be >= 1"),
            (self.retrain_tolerance >= 0, "retrain_tolerance", "must be >= 0"),
            (self.keep_versions >= 1, "keep_versions", "must be >= 1"),
            (self.live_window >= 100, "live_window", "must be >= 100"),
            (
                1 <= self.drift_min_rows <= self.live_window,
                "drift_min_rows",
                "must be 1..PODLATENCY_LIVE_WINDOW",
            ),
            (0.0 < self.quantile_alpha < 1.0, "quantile_alpha", "must be strictly between 0 and 1"),
            (
                _quantiles_valid(self.quantiles),
                "quantiles",
                f"must be up to {MAX_QUANTILES} comma-separated numbers, each strictly between 0 and 1",
            ),
            (self.device in get_args(Device), "device", f"must be one of {get_args(Device)}"),
            (self.engine in get_args(Engine), "engine", f"must be one of {get_args(Engine)}"),
            (
                re.fullmatch(r"[A-Za-z0-9_./+-]+", self.compiler) is not None,
                "compiler",
                "must be a command name or path (letters, digits and _./+-)",
            ),
            (_slow_ms_valid(self.trace_slow_ms), "trace_slow_ms", "must be auto, off or milliseconds > 0"),
            (self.objective in get_args(Objective), "objective", f"must be one of {get_args(Objective)}"),
            (self.log_level in get_args(LogLevel), "log_level", f"must be one of {get_args(LogLevel)}"),
            (self.watch_timeout_s >= 1, "watch_timeout_s", "must be >= 1"),
            (
                all(_IMPORT_PATH.fullmatch(path) for path in self.extension_paths),
                "extensions",
                "must be comma-separated module:attribute import paths",
            ),
            (
                not self.publish_url or self.publish_url.startswith(("http://", "https://")),
                "publish_url",
                "must be an http:// or https:// URL",
            ),
            (
                not self.follow_url or self.follow_url.startswith(("http://", "https://")),
                "follow_url",
                "must be an http:// or https:// URL",
            ),
            (
                not (self.follow_url and self.rollout_configmap),
                "follow_url",
                "cannot be set with PODLATENCY_ROLLOUT_CONFIGMAP (a predictor follows one of them)",
            ),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()} {rule}, got {getattr(self, name)!r}")
        check_lease_timings(self.lease_duration_s, self.lease_renew_deadline_s, self.lease_retry_period_s)


_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def warn_unknown(environ: Mapping[str, str], known: set[str]) -> None:
    """Log each unknown ``PODLATENCY_*`` variable once, with the closest known one: a typo is not silent."""
    for name in sorted(set(environ) - known):
        if name.startswith(ENV_PREFIX):
            closest = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {closest[0]}?" if closest else ""
            logger.warning("%s is not a podlatency setting and is ignored%s", name, hint)


MAX_QUANTILES = 16
"""The most quantiles one model serves (each is an output of every tree leaf)."""


def _numbers(text: str) -> list[float]:
    """Comma-separated numbers (``ValueError`` on one that is not)."""
    return [float(part) for part in text.split(",") if part.strip()]


def _quantiles_valid(text: str) -> bool:
    """Up to :data:`MAX_QUANTILES` numbers, each strictly between 0 and 1."""
    try:
        values = _numbers(text)
    except ValueError:
        return False
    return len(values) <= MAX_QUANTILES and all(0.0 < value < 1.0 for value in values)


def _slow_ms_valid(value: str) -> bool:
    """``auto``, ``off`` or a positive finite number of milliseconds."""
    if value.strip().lower() in ("auto", "off"):
        return True
    try:
        milliseconds = float(value)
    except ValueError:
        return False
    return 0.0 < milliseconds < float("inf")


def check_lease_timings(duration_s: int, renew_deadline_s: int, retry_period_s: int) -> None:
    """Refuse leader-election timings that ``kubernetes.leaderelection`` would answer with ``sys.exit``."""
    rules = [
        (retry_period_s >= 1, "LEASE_RETRY_PERIOD_S must be >= 1"),
        (renew_deadline_s > 1.2 * retry_period_s, "LEASE_RENEW_DEADLINE_S must be > 1.2 x the retry period"),
        (duration_s > renew_deadline_s, "LEASE_DURATION_S must be > LEASE_RENEW_DEADLINE_S"),
    ]
    for ok, rule in rules:
        if not ok:
            raise SettingsError(
                f"{ENV_PREFIX}{rule} (got duration {duration_s}, renew deadline {renew_deadline_s}, "
                f"retry period {retry_period_s})"
            )


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _parse(kind: object, env_name: str, raw: str) -> object:
    """One variable's text as the field's declared type (read from the dataclass, not a list kept by hand)."""
    if kind is bool:
        value = raw.strip().lower()
        if value not in _TRUE | _FALSE:
            raise SettingsError(f"{env_name} must be true or false, got {raw!r}")
        return value in _TRUE
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            article = "an integer" if kind is int else "a number"
            raise SettingsError(f"{env_name} must be {article}, got {raw!r}") from None
    if kind is Path:
        return Path(raw).expanduser()
    if get_origin(kind) is Literal:  # choices are lower-case words
        return raw.strip().lower()
    return raw
