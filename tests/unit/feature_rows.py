"""Feature rows that tests share: random pods, and every feature at its bounds."""

from __future__ import annotations

import numpy as np

from podlatency.schema import FEATURE_NAMES, MAX_COUNT, add_derived_columns


def rows_at_every_bound(count: int = 64, seed: int = 3) -> np.ndarray:
    """Random rows, then each raw feature alone at its lowest and its highest value."""
    rng = np.random.default_rng(seed)
    raw = len(FEATURE_NAMES) - 2
    fractions = ("kv_cache_percentage", "prefix_cache_score")
    highest = [1.0 if name in fractions else MAX_COUNT for name in FEATURE_NAMES]
    highest[FEATURE_NAMES.index("pod_type_code")] = 2.0
    base = np.zeros((count, len(FEATURE_NAMES)), dtype=np.float32)
    base[:, :raw] = rng.uniform(0.0, 1.0, (count, raw)) * np.minimum(highest[:raw], 4096)
    rows = [base]
    for column in range(raw):
        for value in (0.0, highest[column]):
            row = base[:1].copy()
            row[0, column] = value
            rows.append(row)
    matrix = np.concatenate(rows)
    encoder_in = FEATURE_NAMES.index("encoder_input_size")
    matched = FEATURE_NAMES.index("encoder_matched_size")
    matrix[:, matched] = np.minimum(matrix[:, matched], matrix[:, encoder_in])
    add_derived_columns(matrix)
    return np.ascontiguousarray(matrix)
