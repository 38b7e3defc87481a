"""Predictions a router can rank: monotone in load, and apart for pods whose load differs.

A router compares our predictions across candidate pods, so two promises matter more than a few
percent of error:

- **Monotone.** All else equal, more load never predicts a faster pod. Per target,
  :data:`MONOTONE_FEATURES` says which features may only raise (+1) or only lower (-1) it; training
  hands them to XGBoost as ``monotone_constraints``. The derived columns follow their raw ones: more
  prompt or less prefix cached is more ``uncached_input_tokens``, more images or fewer cached ones is
  more ``uncached_encoder_items``, so raising a raw feature moves every column it feeds the same way.
- **Apart.** A constrained tree ensemble is a staircase, flat wherever its rows show no effect larger
  than their noise. At low load that is most of the space: a pod with 2 running requests and an idle
  one fall on the same step and tie, and the constraint makes it worse (a split that the noisy rows
  say goes the wrong way gets two equal leaves). So each model also carries a **load trend**: per
  monotone feature a slope small enough to cost no accuracy, a rise of :data:`TREND_SHARE` of the
  latency across the feature's range (its 5th to 95th percentile in the training rows), in the
  feature's direction. The slope is on ``log1p`` of the feature, so it flattens far beyond that
  range (:func:`podlatency.margins.trend_of`). Trees are fitted to the log latency minus the trend,
  and serving adds it back, so the sum still fits the rows while pods that differ in any monotone
  feature come out apart, in the right order. A feature that never varied in the training rows
  (the llm-d router sends no ``decode_tokens_in_flight``) gets no slope: nothing says how much it
  matters.

Why logs: XGBoost enforces a constraint per split for the whole subtree, so a split on the queue
bounds every idle pod's leaf below every queued pod's, long prompts included. In milliseconds that
costs dearly (an idle pod with a long prompt is slower than a queued one with a short prompt); in
logs the effects multiply into sums and the bound fits (``python -m measure.load_order``).

``docs/models.md`` has what this costs in held-out error, and the tests that hold both promises.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from podlatency.schema import FEATURE_NAMES

TREND_SHARE = 0.01
"""The load trend's rise across a feature's range, as a share of the target's median latency."""

LOAD_FEATURES = (
    "kv_cache_percentage",
    "num_request_waiting",
    "num_request_running",
    "prefill_tokens_in_flight",
    "decode_tokens_in_flight",
)
"""A pod's own load: more of any never predicts it faster, for either target."""

MONOTONE_FEATURES: dict[str, dict[str, int]] = {
    # TTFT: queueing, batch-mates and KV pressure delay the prefill; so does more prompt to prefill
    # (uncached tokens, images the encoder cache lacks). More of the prompt or its images cached is faster.
    "ttft": dict.fromkeys(LOAD_FEATURES, 1)
    | dict.fromkeys(
        ("input_token_length", "uncached_input_tokens", "encoder_input_size", "uncached_encoder_items"), 1
    )
    | {"prefix_cache_score": -1, "encoder_matched_size": -1},
    # TPOT: every decode step serves the whole batch, and attention reads the whole context, prompt
    # and tokens generated so far. The prefix cache and images change the prefill, not a decode step.
    "tpot": dict.fromkeys(LOAD_FEATURES, 1)
    | dict.fromkeys(("input_token_length", "uncached_input_tokens", "num_tokens_generated"), 1),
}
"""Per target, each monotone feature's direction: +1 never lowers the prediction, -1 never raises it."""


def monotone_constraints(target: str, feature_names: tuple[str, ...] = FEATURE_NAMES) -> str:
    """XGBoost's ``monotone_constraints`` for ``target``: one direction per column, 0 for free ones."""
    directions = MONOTONE_FEATURES[target]
    return "(" + ",".join(str(directions.get(name, 0)) for name in feature_names) + ")"


def load_trend(target: str, features: npt.NDArray[np.float32]) -> dict[str, float]:
    """The load trend for ``target`` from its training rows: log latency per unit of ``log1p(feature)``."""
    if len(features) == 0:
        return {}
    rise = float(np.log1p(TREND_SHARE))
    slopes: dict[str, float] = {}
    for name, direction in MONOTONE_FEATURES[target].items():
        column = np.log1p(features[:, FEATURE_NAMES.index(name)], dtype=np.float64)
        low, high = np.percentile(column, [5, 95])
        spread = float(high - low) if high > low else float(column.max() - column.min())
        if spread > 0:
            slopes[name] = direction * rise / spread
    return slopes
