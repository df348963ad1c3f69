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
        out = {}
        for c in self.columns_:  # column by column on numpy: this runs on the request path
            values = df[c].to_numpy()
            if c in self.categorical_:
                if c not in self._dtypes:
                    self._dtypes[c] = pd.CategoricalDtype(self.categorical_[c])
                out[c] = pd.Categorical(np.where(pd.isna(values), None, values.astype(str)), dtype=self._dtypes[c])
            elif values.dtype.kind in "fiub":
                out[c] = values.astype(np.float64)
            else:
                out[c] = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
        return pd.DataFrame(out, index=df.index)

    @property
    def _dtypes(self) -> dict:
        if "_dtype_cache" not in self.__dict__:  # not pickled state: rebuilt after loading
            self.__dict__["_dtype_cache"] = {}
        return self.__dict__["_dtype_cache"]

    def fit_transform(self, df: pd.DataFrame) -> pd.DataFrame:
        return self.fit(df).transform(df)
