"""The predict engines: how a float32 matrix of pod rows becomes TTFT and TPOT predictions.

- :mod:`~podlatency.engines.predictor` — :class:`Predictor` picks the engine per call: compiled trees
  on the CPU once a model's compile is checked, else XGBoost ``inplace_predict``, and XGBoost on the
  GPU for calls big enough to pay for it; :class:`LoadedModel` is a bundle with its predictor;
- :mod:`~podlatency.engines.compiled` — a compiled model (native code from treelite + tl2cgen) and the
  check its outputs must pass against XGBoost;
- :mod:`~podlatency.engines.compiling` — :class:`Compiler`: compiles in a child process at the lowest
  priority, caches by content hash, and switches a model to its compiled trees;
- :mod:`~podlatency.engines.batching` — coalesces concurrent requests' rows into one predict call per
  target.
"""
