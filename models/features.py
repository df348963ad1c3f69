"""Feature frames from Feast -> model matrices with a fixed column list and category levels."""

from __future__ import annotations

import lightgbm as lgb
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

    def numeric_mask(self) -> np.ndarray:
        """One flag per column: True where its values have an order (a category code has none)."""
        return np.array([c not in self.categorical_ for c in self.columns_])

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

    def to_numpy(self, df: pd.DataFrame) -> np.ndarray:
        """The model matrix as float64: categorical levels as their codes, NaN where missing or
        unseen. LightGBM maps a pandas categorical to the same codes, so a booster fitted on
        :meth:`transform`'s frame predicts identically on this matrix, without pandas' cost."""
        missing = [c for c in self.columns_ if c not in df.columns]
        if missing:
            raise ValueError(f"feature columns missing from input: {missing}")
        return self.encode({c: df[c].to_numpy() for c in self.columns_}, len(df))

    def encode(self, columns: dict, n: int) -> np.ndarray:
        """Like :meth:`to_numpy` from ``{column: values or one scalar}`` (a scalar fills all ``n`` rows)."""
        # column-major: each column is written contiguously (LightGBM reads this layout as is)
        out = np.empty((n, len(self.columns_)), dtype=np.float64, order="F")
        for j, c in enumerate(self.columns_):
            values = columns.get(c)
            if c in self.categorical_:
                codes = self.codes(c)
                if np.ndim(values) == 0:
                    out[:, j] = codes.get(_level(values), np.nan)
                elif len(values) > 64:  # batch scoring: one hashed lookup per column
                    out[:, j] = _category_codes(values, self.categorical_[c])
                else:
                    out[:, j] = [codes.get(_level(v), np.nan) for v in values]
            else:
                out[:, j] = _numbers(values)
        return out

    def codes(self, column: str) -> dict[str, float]:
        """Level -> code of a categorical column (cached; not pickled state)."""
        cache = self.__dict__.setdefault("_codes_cache", {})
        if column not in cache:
            cache[column] = {level: float(i) for i, level in enumerate(self.categorical_[column])}
        return cache[column]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_dtype_cache", "_codes_cache")}

    @property
    def _dtypes(self) -> dict:
        if "_dtype_cache" not in self.__dict__:  # not pickled state: rebuilt after loading
            self.__dict__["_dtype_cache"] = {}
        return self.__dict__["_dtype_cache"]

    def fit_transform(self, df: pd.DataFrame) -> pd.DataFrame:
        return self.fit(df).transform(df)


def _level(value) -> str | None:
    """A categorical value as the string level it was fitted on; None when missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def _category_codes(values, levels: list[str]) -> np.ndarray:
    """Codes of ``values`` among ``levels`` as floats, NaN where missing or unseen (as :func:`_level`)."""
    arr = np.asarray(values, dtype=object)
    missing = pd.isna(arr)
    text = np.where(missing, None, arr.astype(str))
    codes = pd.Categorical(text, categories=levels).codes.astype(np.float64)
    codes[codes < 0] = np.nan
    return codes


def _numbers(values) -> np.ndarray | float:
    if values is None:
        return np.nan
    if np.ndim(values) == 0:
        try:
            return float(values)
        except (TypeError, ValueError):
            return np.nan
    if isinstance(values, list):  # plain rows: None is missing
        try:
            return np.array(values, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.array(values, dtype=object)
    arr = np.asarray(values)
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float64)
    return pd.to_numeric(pd.Series(arr), errors="coerce").to_numpy(dtype=np.float64)


SIZE_PARAMS = ("num_leaves", "min_child_samples")  # what a tree-size grid varies


def fit_best_size(
    estimator,
    grid,
    params: dict,
    user_params: dict,
    seed: int,
    fit: tuple,
    held: tuple,
    rounds: int,
    sample_weight: np.ndarray | None = None,
):
    """Each tree size of ``grid`` (only the caller's own when ``user_params`` sets one) fitted on
    ``fit`` = (X, y) with early stopping after ``rounds`` on ``held`` = (X, y); returns the size
    with the lowest held-out loss and its fitted LightGBM ``estimator``. ``sample_weight``: the
    ``fit`` rows' weights (the held-out loss stays unweighted)."""
    sizes = [{}] if set(SIZE_PARAMS) & set(user_params) else grid
    fits = []
    for size in sizes:
        candidate = estimator(**(params | size), random_state=seed).fit(
            *fit,
            sample_weight=sample_weight,
            eval_X=held[0],
            eval_y=held[1],
            callbacks=[lgb.early_stopping(rounds, verbose=False)],
        )
        fits.append((next(iter(candidate.best_score_["valid_0"].values())), size, candidate))
    _, size, best = min(fits, key=lambda f: f[0])
    return size, best
