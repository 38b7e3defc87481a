"""Every error podlatency raises on purpose, each carrying the HTTP status it maps to.

The hierarchy::

    PodlatencyError (500)
    ├── ClientError (400)              the caller sent something we cannot use
    │   ├── MalformedBody (400)        not JSON, or not the JSON shape at all
    │   ├── InvalidField (422)         a field is missing, mistyped, out of range or unknown
    │   │   └── QuantileNotServed (422)  a quantile asked for that the model in service does not serve
    │   ├── TooManyPods (413)          more rows than the configured limit
    │   ├── BodyTooLarge (413)         a body over the configured limit (forwarded to a leader)
    │   ├── Unauthorized (401)         a write route without the configured bearer token
    │   ├── NotFound (404)             no such model (or model file)
    │   └── Unsupported (501)          an llm-d route whose answer podlatency will not give (pickles)
    ├── Unavailable (503)              it passes: try again after Retry-After
    │   ├── Overloaded (503)           more prediction requests in progress than the limit
    │   ├── ModelNotReady (503)        no model is loaded yet (training or loading is under way)
    │   ├── NotLeader (503)            a standby trainer knows no leader to forward samples to
    │   └── ClusterUnavailable (503)   the Kubernetes API could not be reached, or refused, to publish a model
    │       └── RolloutConfigMapMissing (503)  the rollout ConfigMap is gone (``helm upgrade`` restores it)
    ├── ModelLoadError (500)           a bundle on disk is corrupt, truncated or mismatched
    ├── InvalidRollout (500)           the rollout ConfigMap declares a version it does not say how to fetch
    ├── TrainingDataError (422)        a sample file lacks a column or holds non-numeric values
    ├── SettingsError (500)            the configuration cannot be used
    ├── DeviceUnavailable (500)        ``cuda`` was asked for and there is no usable GPU
    └── CompileFailed (500)            a model could not be compiled; XGBoost keeps serving it (never sent)
        └── CompileSuperseded (500)    another model replaced it before its compile finished (never sent)

The HTTP layer maps them to responses in one place (:mod:`podlatency.web.errors`); the core never
imports a web framework.
"""

from __future__ import annotations


class PodlatencyError(Exception):
    """Base of all podlatency errors."""

    status_code = 500
    code = "internal_error"
    retry_after_s: int | None = None
    """Set on errors that pass: the response tells the client when to try again."""

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class ClientError(PodlatencyError):
    """The request cannot be served as sent; retrying it unchanged will fail again."""

    status_code = 400
    code = "bad_request"


class MalformedBody(ClientError):
    """The body is not JSON, or not a JSON object of the expected shape."""

    status_code = 400
    code = "malformed_body"


class InvalidField(ClientError):
    """One field is missing, of the wrong type, out of range, or not a known field."""

    status_code = 422
    code = "invalid_field"


class QuantileNotServed(InvalidField):
    """``quantiles`` asks for one the model in service lacks (the message lists those it serves)."""

    code = "quantile_not_served"


class TooManyPods(ClientError):
    """The request carries more rows than this server accepts in one call."""

    status_code = 413
    code = "too_many_pods"


class BodyTooLarge(ClientError):
    """A request body larger than PODLATENCY_MAX_BODY_BYTES."""

    status_code = 413
    code = "body_too_large"


class Unauthorized(ClientError):
    """A write route was called without the bearer token the server is configured with."""

    status_code = 401
    code = "unauthorized"


class NotFound(ClientError):
    """The named model or model file does not exist."""

    status_code = 404
    code = "not_found"


class Unsupported(ClientError):
    """A route of llm-d's API whose answer podlatency will not give; the detail names the alternative."""

    status_code = 501
    code = "not_implemented"


class Unavailable(PodlatencyError):
    """The request could not be served now; the same request may succeed after ``Retry-After``."""

    status_code = 503
    code = "unavailable"
    retry_after_s = 1


class ModelNotReady(Unavailable):
    """No model is loaded yet; the server answers again once one is."""

    status_code = 503
    code = "model_not_ready"
    retry_after_s = 1


class Overloaded(Unavailable):
    """More prediction requests are in progress than the server takes; answered at once, not queued."""

    status_code = 503
    code = "overloaded"
    retry_after_s = 1


class ClusterUnavailable(Unavailable):
    """The Kubernetes API could not be reached (or refused us); the model was stored, not published."""

    status_code = 503
    code = "cluster_unavailable"
    retry_after_s = 5


class RolloutConfigMapMissing(ClusterUnavailable):
    """The rollout ConfigMap does not exist; trainers may not create it (``helm upgrade`` restores it)."""

    status_code = 503
    code = "rollout_configmap_missing"
    retry_after_s = 30


class NotLeader(Unavailable):
    """A standby trainer was sent samples and knows no leader to forward them to (or it did not answer)."""

    status_code = 503
    code = "not_leader"
    retry_after_s = 2


class ModelLoadError(PodlatencyError):
    """A model bundle could not be loaded; the model that was serving keeps serving."""

    status_code = 500
    code = "model_load_failed"


class InvalidRollout(PodlatencyError):
    """The rollout ConfigMap declares a version without the fields needed to fetch and verify it."""

    status_code = 500
    code = "invalid_rollout"


class TrainingDataError(PodlatencyError):
    """Recorded samples cannot be trained on; nothing was written."""

    status_code = 422
    code = "invalid_training_data"


class SettingsError(PodlatencyError):
    """A setting holds a value no process could run with."""

    status_code = 500
    code = "invalid_settings"


class DeviceUnavailable(PodlatencyError):
    """``PODLATENCY_DEVICE=cuda`` was asked for, and XGBoost cannot use a GPU here."""

    status_code = 500
    code = "device_unavailable"


class CompileFailed(PodlatencyError):
    """A model could not be brought to the compiled engine (no compiler, a failed compile, other outputs).

    Never answered to a request: XGBoost keeps serving the model, and the reason is logged.
    """

    code = "compile_failed"


class CompileSuperseded(CompileFailed):
    """A compile stopped, or never started, because another model replaced the one it was for."""

    code = "compile_superseded"
