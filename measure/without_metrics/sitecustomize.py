"""Prometheus observations made no-ops in a server process that has this folder on ``PYTHONPATH``.

Python imports ``sitecustomize`` at start-up. :mod:`measure.request_cost` starts one podlatency server
this way, to measure what its metrics cost per request by taking them away; nothing else uses it.
"""

from prometheus_client import metrics


def _nothing(*_: object, **__: object) -> None:
    """Observe nothing."""


metrics.Histogram.observe = _nothing  # type: ignore[method-assign]
metrics.Counter.inc = _nothing  # type: ignore[method-assign]
metrics.Gauge.inc = _nothing  # type: ignore[method-assign]
metrics.Gauge.dec = _nothing  # type: ignore[method-assign]
