"""Learning: the rows models learn from, how they are trained, and how a new version is published.

- :mod:`~podlatency.learning.workload` — the synthetic workload the embedded default is trained on;
- :mod:`~podlatency.learning.samples` — :class:`SampleStore`: observed latencies kept per target in
  bounded per-regime buckets, persisted;
- :mod:`~podlatency.learning.sample_files` — recorded observations in CSV or Parquet, read and written;
- :mod:`~podlatency.learning.training` — one booster per target, calibrated and evaluated on held-out
  rows, packed into a bundle; the embedded default;
- :mod:`~podlatency.learning.retraining` — :class:`Retrainer`: retrains from observed samples and
  publishes only a candidate that is not worse than the model in service;
- :mod:`~podlatency.learning.publishing` — where a new version goes: the :class:`Publisher` protocol,
  and the model folder's publisher (the rollout ConfigMap's is in :mod:`podlatency.cluster`).
"""
