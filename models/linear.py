"""A smooth companion to a booster: an L2 logistic (or ridge) regression on the signed log of each
numeric feature.

Trees are flat outside the range they were fitted on, and a churn model is fitted on earlier
snapshots than the ones it scores (shorter tenures, shorter histories for buy-till-you-die).
A strongly regularised linear score keeps ranking there. On three public retail sets its
log-odds, added to the booster's, raised the holdout AUC by 0.002-0.005 (bench/RESULTS.md).
The signed log makes counts and currency amounts, with their long tails, near-linear in risk.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge

SPREAD_TOLERANCE = 1e-9  # relative spread below which a column counts as constant
MAX_SD = 10.0  # a standardised value is clipped here: beyond, a value is an outlier, not a trend


class SignedLogLinear:
    """Log-odds of a logistic regression on standardised ``sign(x) log(1 + |x|)`` of the usable
    columns of an encoded feature matrix; a missing value counts as the training mean, and a
    value more than :data:`MAX_SD` training deviations from it counts as that many.

    ``contributions`` are relative to the training population (a member at the mean of every
    column scores 0), so they add to a booster's SHAP values on the same log-odds scale."""

    def __init__(self, C: float = 0.01, max_iter: int = 2000):
        self.C = C
        self.max_iter = max_iter

    def fit(self, M: np.ndarray, y: np.ndarray, usable: np.ndarray) -> SignedLogLinear:
        """``usable``: one flag per column of ``M`` (numeric ones; a category code has no order)."""
        _fit_columns(self, M, usable)
        if not len(self.columns_):  # nothing with an order that varies: the score is 0 for everyone
            self.coef_ = np.zeros(0)
            return self
        model = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(self._standardised(M), np.asarray(y))
        self.coef_ = model.coef_[0]
        return self

    def _standardised(self, M: np.ndarray) -> np.ndarray:
        return _standardise(self, M)

    def decision(self, M: np.ndarray) -> np.ndarray:
        """Log-odds relative to the training population (no intercept)."""
        return self._standardised(M) @ self.coef_

    def contributions(self, M: np.ndarray) -> np.ndarray:
        """Rows x all columns of ``M``: each used column's share of :meth:`decision`, 0 elsewhere."""
        out = np.zeros((len(M), self.n_columns_))
        out[:, self.columns_] = self._standardised(M) * self.coef_
        return out


class SignedLogRidge:
    """A ridge regression on the same standardised ``sign(x) log(1 + |x|)`` columns as
    :class:`SignedLogLinear` (missing = the training mean, clipped at :data:`MAX_SD`): the smooth
    companion of a regression booster."""

    def __init__(self, alpha: float = 10.0):
        self.alpha = alpha

    def fit(self, M: np.ndarray, y: np.ndarray, usable: np.ndarray) -> SignedLogRidge:
        _fit_columns(self, M, usable)
        y = np.asarray(y, dtype=np.float64)
        if not len(self.columns_):  # nothing with an order that varies: the training mean for everyone
            self.coef_, self.intercept_ = np.zeros(0), float(y.mean())
            return self
        model = Ridge(alpha=self.alpha).fit(self._standardised(M), y)
        self.coef_, self.intercept_ = model.coef_, float(model.intercept_)
        return self

    def _standardised(self, M: np.ndarray) -> np.ndarray:
        return _standardise(self, M)

    def predict(self, M: np.ndarray) -> np.ndarray:
        return self._standardised(M) @ self.coef_ + self.intercept_


def _fit_columns(model, M: np.ndarray, usable: np.ndarray) -> None:
    """Sets ``columns_`` (the usable columns that vary), their ``center_`` and ``scale_`` on the
    signed-log scale, and ``n_columns_``."""
    Z = _signed_log(np.asarray(M, dtype=np.float64)[:, np.asarray(usable, dtype=bool)])
    with warnings.catch_warnings():  # an all-missing column has no mean ("empty slice"): left out below
        warnings.simplefilter("ignore", RuntimeWarning)
        center, scale = np.nanmean(Z, axis=0), np.nanstd(Z, axis=0)
    # a constant column has a rounding-error spread (1e-16), not 0: dividing by it would turn any
    # later value (a best send hour once engagement starts) into an astronomically large score
    varies = np.isfinite(scale) & (scale > SPREAD_TOLERANCE * np.maximum(1.0, np.abs(center)))
    model.columns_ = np.flatnonzero(usable)[varies]
    model.center_, model.scale_ = center[varies], scale[varies]
    model.n_columns_ = M.shape[1]


def _standardise(model, M: np.ndarray) -> np.ndarray:
    """The fitted columns of ``M`` on the signed-log scale, standardised, missing = 0, clipped."""
    Z = (_signed_log(np.asarray(M, dtype=np.float64)[:, model.columns_]) - model.center_) / model.scale_
    return np.clip(np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0), -MAX_SD, MAX_SD)


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))
