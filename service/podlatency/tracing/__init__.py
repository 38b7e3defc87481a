"""Tracing: which requests are traced and kept, and how their spans are made and sent.

- :mod:`~podlatency.tracing.otel` — :class:`Tracing`, the OpenTelemetry set-up from ``OTEL_*``: the
  head sampler, the span processor and the OTLP/HTTP exporter;
- :mod:`~podlatency.tracing.tail_sampling` — which traces are kept after the fact (slow, failed) and
  the per-route slow thresholds;
- :mod:`~podlatency.tracing.phase_spans` — :class:`PhaseRecorder` notes a request's phases on the
  request path; :class:`SpanWriter` makes the spans and phase histograms on its own thread;
- :mod:`~podlatency.tracing.bounded_export` — a batch span processor that drops, counted, rather than
  overflow or log per span while the collector is down.

The HTTP side (server spans, W3C trace context, the keep decision per request) is in
:mod:`podlatency.web.edge`, :mod:`podlatency.web.propagation` and :mod:`podlatency.web.served`.
"""
