"""Feature frames from Feast -> model matrices with a fixed column list and category levels."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Identifiers, timestamps and label columns are never model inputs; ``last_purchase_ts`` is an
# absolute time (it would let a model learn the calendar), ``tier`` duplicates ``tier_level``.
NOT_FEATURES = {"member_id", "event_timestamp", "last_purchase_ts", "tier", "request_ts", "label", "target"}


class FeatureMatrix:
    """Remembers which columns a model was fitted on and the levels of each categorical one."""

    def __init__(self, exclude: set[str] | None = None):
        self.exclude = set(NOT_FEATURES | (exclude or set()))

    def fit(self, df: pd.DataFrame) -> FeatureMatrix:
        cols = [c for c in df.columns if c not in self.exclude and not c.startswith("_")]
        self.categorical_ = {
            c: sorted(df[c].dropna().astype(str).unique().tolist())
            for c in cols
            if not pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        }
        self.columns_ = cols
        return self

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.columns_ if c not in df.columns]
        if missing:
            raise ValueError(f"feature columns missing from input: {missing}")
        out = pd.DataFrame(index=df.index)
        for c in self.columns_:
            if c in self.categorical_:
                out[c] = pd.Categorical(df[c].astype("string"), categories=self.categorical_[c])
            else:
                out[c] = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
        return out

    def fit_transform(self, df: pd.DataFrame) -> pd.DataFrame:
        return self.fit(df).transform(df)
