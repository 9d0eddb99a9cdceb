"""`DataSchema`: what a model needs to know about the data, and nothing that grows with the log."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DataSchema:
    """Sizes and per-id feature tables.

    Feature tables are indexed by dense id (row 0 = padding/unknown) and hold
    dense feature codes (0 = unknown): shape [num_users + 1] for a single-valued
    feature, [num_users + 1, M] for a multi-valued one (right-padded with 0).
    """

    num_users: int  # largest dense user id
    num_items: int  # largest dense item id
    max_len: int  # history window length L
    user_features: dict[str, np.ndarray] = field(default_factory=dict)
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    cardinality: dict[str, int] = field(default_factory=dict)  # feature name -> largest code

    def feature_vocab_size(self, name: str) -> int:
        return int(self.cardinality[name]) + 1
