"""Probability calibrators that never answer exactly 0 or 1, and the choice between them by Brier score.

Each maps a booster's raw probability to a calibrated one with ``fit(raw, y)`` /
``predict(raw)``. Isotonic regression alone returns 0 or 1 for whole blocks of members
(a block of 200 members none of whom churned says "certainly stays"); here each block is
shrunk towards the base rate by its size, so a block's estimate stays a rate, never a certainty.
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

METHODS = ("platt", "beta", "isotonic")  # tried in this order; ties go to the first
PRIOR_ROWS = 2.0  # isotonic blocks borrow this many pseudo-rows at the base rate
EPS = 1e-6
# No member is certain to stay or to go: every calibrator answers inside these bounds (the API
# answers with 4 decimals, so a bound closer to 0 or 1 would print as a certainty; a logistic
# map on well separated scores reaches 1.0 in floating point).
PROBABILITY_BOUNDS = (1e-3, 1 - 1e-3)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p / (1 - p))


class Platt:
    """Logistic regression on the raw log-odds (two parameters: slope and intercept)."""

    def fit(self, raw: np.ndarray, y: np.ndarray) -> Platt:
        self.model_ = LogisticRegression(C=1e4).fit(_logit(raw)[:, None], y)
        return self

    def predict(self, raw: np.ndarray) -> np.ndarray:
        return np.clip(self.model_.predict_proba(_logit(raw)[:, None])[:, 1], *PROBABILITY_BOUNDS)


class Beta:
    """Beta calibration (Kull, Silva Filho & Flach, 2017): logistic regression on ``ln p`` and
    ``-ln(1 - p)``, with both slopes kept non-negative (a slope that comes out negative is
    dropped, as the authors' reference implementation does) so the map stays monotone."""

    def fit(self, raw: np.ndarray, y: np.ndarray) -> Beta:
        X = self._features(raw)
        self.columns_ = [0, 1]
        self.model_ = LogisticRegression(C=1e4).fit(X, y)
        negative = [j for j, c in zip(self.columns_, self.model_.coef_[0], strict=True) if c < 0]
        if negative:
            self.columns_ = [j for j in self.columns_ if j not in negative] or [0]
            self.model_ = LogisticRegression(C=1e4).fit(X[:, self.columns_], y)
        return self

    def predict(self, raw: np.ndarray) -> np.ndarray:
        return np.clip(self.model_.predict_proba(self._features(raw)[:, self.columns_])[:, 1], *PROBABILITY_BOUNDS)

    @staticmethod
    def _features(raw: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(raw, dtype=float), EPS, 1 - EPS)
        return np.column_stack([np.log(p), -np.log1p(-p)])


class ShrunkIsotonic:
    """Isotonic regression whose blocks are shrunk towards the (Laplace-smoothed) base rate:
    ``(positives + PRIOR_ROWS x base) / (rows + PRIOR_ROWS)``, then pooled again where that broke
    the order. Monotone like isotonic, strictly inside (0, 1), and a large block keeps almost
    exactly its observed rate."""

    def fit(self, raw: np.ndarray, y: np.ndarray) -> ShrunkIsotonic:
        raw, y = np.asarray(raw, dtype=float), np.asarray(y, dtype=float)
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
        base = (float(y.sum()) + 1) / (len(y) + 2)  # Laplace: even a one-class sample is not a certainty
        fitted = iso.predict(raw)
        values, block = np.unique(fitted, return_inverse=True)  # blocks have distinct levels
        rows = np.bincount(block, minlength=len(values))
        positives = np.bincount(block, weights=y, minlength=len(values))
        shrunk = (positives + PRIOR_ROWS * base) / (rows + PRIOR_ROWS)
        # a small block moves further than a large one and can overtake it: pool those again
        shrunk = IsotonicRegression().fit(values, shrunk, sample_weight=rows + PRIOR_ROWS).predict(values)
        # np.interp over the isotonic's thresholds with each level replaced by its shrunk value
        self.x_ = iso.X_thresholds_
        self.y_ = shrunk[np.searchsorted(values, iso.y_thresholds_).clip(0, len(values) - 1)]
        return self

    def predict(self, raw: np.ndarray) -> np.ndarray:
        return np.clip(np.interp(np.asarray(raw, dtype=float), self.x_, self.y_), *PROBABILITY_BOUNDS)


CALIBRATORS = {"platt": Platt, "beta": Beta, "isotonic": ShrunkIsotonic}


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(y, dtype=float)) ** 2))


def choose_calibrator(
    raw: np.ndarray, y: np.ndarray, methods: tuple[str, ...] = METHODS, seed: int = 7, folds: int = 3
) -> tuple[str, object, dict[str, float]]:
    """The method with the lowest cross-validated Brier score on (raw, y), refitted on all of it.

    Returns (method, fitted calibrator, {method: Brier}). Cross-validation keeps the flexible
    isotonic from winning by fitting the very rows it is scored on."""
    unknown = [m for m in methods if m not in CALIBRATORS]
    if unknown:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATORS)} or 'auto', not {unknown[0]!r}")
    raw, y = np.asarray(raw, dtype=float), np.asarray(y, dtype=int)
    scores: dict[str, float] = {}
    if y.min() == y.max():  # one class: only the shrunk isotonic can still answer (the smoothed rate)
        return "isotonic", ShrunkIsotonic().fit(raw, y), {m: np.nan for m in methods}
    if len(methods) == 1 or np.bincount(y, minlength=2).min() < folds:
        scores = {m: np.nan for m in methods}
    else:
        split = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(raw[:, None], y))
        for m in methods:
            p = np.empty(len(y))
            for fit, out in split:
                p[out] = CALIBRATORS[m]().fit(raw[fit], y[fit]).predict(raw[out])
            scores[m] = brier(y, p)
    best = min(methods, key=lambda m: (np.nan_to_num(scores[m], nan=np.inf), methods.index(m)))
    return best, CALIBRATORS[best]().fit(raw, y), scores


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over ``bins`` equal-width probability bins: the row-weighted mean |observed rate -
    mean prediction|."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    rows = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=p, minlength=bins))
    return float(gap.sum() / max(rows.sum(), 1))
