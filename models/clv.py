"""Member value: expected spend over a horizon, ordered by expected rank; LoyaltyIndex and RFM segments.

Most members spend nothing in a window and a few spend very much, so ordering members by expected
spend lets a handful of big baskets decide the order. The model orders them by their expected rank
of spend instead (non-buyers share one tied rank, as in the Spearman correlation the value is
scored by): with ``z`` the non-buyers' share, ``z / 2 + P(buy) x (z / 2 + (1 - z) x E[q | buy])``,
``q`` a buyer's quantile among that window's buyers. P(buy) is a LightGBM classifier (training
snapshots weighted by the caller, as churn weighs them); E[q | buy] averages an L2 booster and a
ridge regression on signed-log features (:mod:`models.linear`), both fitted on the buyers and each
clipped to 0..1. A fixed, strictly increasing map (isotonic regression of the training rows' spend
on their score) turns it into currency: the horizon value is the mean spend of training members
with a similar score.

Both boosters read the Feast features, buy-till-you-die scores (``member_btyd``) among them; tree
count and size are chosen on a fifth of the members held out (early stopping), then each is
refitted on all. The 12-month figure annualises the horizon value.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import GroupShuffleSplit

from models.features import SIZE_PARAMS, FeatureMatrix, fit_best_size
from models.linear import SignedLogRidge

PARAMS = {
    "n_estimators": 1000,  # the ceiling: early stopping on the held-out members picks the count
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 40,
    # no row or column subsampling: on CDNOW (bench/external_data.py) it made the holdout
    # Spearman depend on the seed (0.414-0.441), ranking members dormant for longer than any
    # training snapshot by chance; without it every seed gives 0.440, and the shared sets'
    # means over four seeds move by -0.002 and +0.000
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "verbose": -1,
    "n_jobs": 2,
}
EARLY_STOPPING_ROUNDS = 50
HELD_OUT_SHARE = 0.2
COMPLEXITY_GRID = (  # as for churn: lowest held-out loss wins (log loss for P(buy), L2 for the quantile)
    {"num_leaves": 7, "min_child_samples": 50},
    {"num_leaves": 15, "min_child_samples": 50},
    {"num_leaves": 31, "min_child_samples": 40},
)
RIDGE_ALPHA = 10.0
# The value map is flat where the isotonic regression is; this many currency units per unit of
# expected rank keep the model's order there (a member's value moves by at most 1e-6)
TIE_BREAK = 1e-6
RFM_SEGMENTS = (  # (name, rule on R/F/M quintile scores 1..5), first match wins
    ("champions", lambda r, f, m: (r >= 4) & (f >= 4) & (m >= 4)),
    ("loyal", lambda r, f, m: (r >= 3) & (f >= 4)),
    ("big_spenders", lambda r, f, m: (r >= 3) & (m >= 5)),
    ("new_or_promising", lambda r, f, m: (r >= 4) & (f <= 2)),
    ("at_risk", lambda r, f, m: (r <= 2) & (f >= 3)),
    ("hibernating", lambda r, f, m: (r <= 2) & (f <= 2)),
)


class CLVModel:
    """Expected spend over the next ``horizon_days`` and its 12-month annualisation."""

    def __init__(self, horizon_days: int = 90, params: dict | None = None, seed: int = 7):
        self.horizon_days = horizon_days
        self.params = params or {}
        self.seed = seed

    def fit(
        self,
        X: pd.DataFrame,
        spend: np.ndarray,
        groups: np.ndarray | None = None,
        snapshots: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> CLVModel:
        """``groups``: member ids, so that a member's rows are held out together. ``snapshots``: each
        row's cutoff (quantiles of spend are taken within a snapshot; the non-buyers' share is the
        latest one's); none: one snapshot. ``sample_weight``: the P(buy) booster's and the value
        map's row weights (e.g. later snapshots counting more)."""
        y = np.clip(np.nan_to_num(np.asarray(spend, dtype=float)), 0, None)
        buy = y > 0
        if buy.sum() < 2:
            raise ValueError("spend: fewer than two rows with spend above 0; a value model needs buyers")
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if w.shape != y.shape or not np.isfinite(w).all() or (w < 0).any() or not w.any():
            raise ValueError("sample_weight must hold one finite, non-negative weight per row, not all zero")
        snap = pd.Series(np.zeros(len(y)) if snapshots is None else np.asarray(snapshots))
        self.features_ = FeatureMatrix().fit(X)
        M, encoded = self.features_.transform(X), self.features_.to_numpy(X)
        numeric = self.features_.numeric_mask()
        self.non_buyers_ = float(1 - buy[(snap == snap.max()).to_numpy()].mean())
        quantile = pd.Series(np.where(buy, y, np.nan)).groupby(snap.to_numpy()).rank(pct=True).to_numpy()

        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        split = GroupShuffleSplit(n_splits=1, test_size=HELD_OUT_SHARE, random_state=self.seed)
        fit_idx, held_idx = next(split.split(M, y, groups))
        self.complexity_, trees = {}, 0
        if buy.all():  # everyone bought: P(buy) is 1
            self.buy_ = None
        else:
            self.buy_, n = self._booster(lgb.LGBMClassifier, M, buy.astype(int), w, fit_idx, held_idx, "buy")
            trees += n
        fit_buyers, held_buyers = fit_idx[buy[fit_idx]], held_idx[buy[held_idx]]
        self.amount_, n = self._booster(
            lgb.LGBMRegressor, M, quantile, None, fit_buyers, held_buyers, "amount", rows=buy
        )
        self.n_trees_ = trees + n
        self.ridge_ = SignedLogRidge(alpha=RIDGE_ALPHA).fit(encoded[buy], quantile[buy], numeric)

        # the map to currency reads the training rows' own scores; fitted instead on a held-out fifth
        # scored by models that did not see it, its holdout RMSE was worse on all three public sets
        # (bench/RESULTS.md)
        score = _expected_rank(self.buy_, self.amount_, self.ridge_, self.non_buyers_, encoded)
        iso = IsotonicRegression(out_of_bounds="clip").fit(score, y, sample_weight=w)
        level = iso.predict(score)
        knots = pd.DataFrame({"score": score, "level": level}).groupby("level")["score"].mean()
        self.map_score_, self.map_value_ = knots.to_numpy(), knots.index.to_numpy()  # both increasing
        return self

    def _booster(self, estimator, M, target, w, fit_idx, held_idx, name, rows=None):
        """One booster: size and tree count chosen on the held-out members (unless the caller set
        the count), then refitted on ``rows`` (all by default) with them. Returns it and its tree count."""
        params = PARAMS | self.params | ({"objective": "regression"} if estimator is lgb.LGBMRegressor else {})
        weights = None if w is None else w[fit_idx]
        if "n_estimators" not in self.params and len(held_idx) and len(np.unique(target[held_idx])) > 1:
            size, best = fit_best_size(
                estimator,
                COMPLEXITY_GRID,
                params,
                self.params,
                self.seed,
                (M.iloc[fit_idx], target[fit_idx]),
                (M.iloc[held_idx], target[held_idx]),
                EARLY_STOPPING_ROUNDS,
                weights,
            )
            params = params | size | {"n_estimators": int(best.best_iteration_ or params["n_estimators"])}
        self.complexity_ |= {f"{name}_{k}": params[k] for k in SIZE_PARAMS}
        rows = np.arange(len(target)) if rows is None else np.flatnonzero(rows)
        model = estimator(**params, random_state=self.seed).fit(
            M.iloc[rows], target[rows], sample_weight=None if w is None else w[rows]
        )
        return model, int(params["n_estimators"])

    def expected_rank(self, X: pd.DataFrame) -> np.ndarray:
        """Each member's expected rank of spend in the horizon on 0..1: the order the value keeps."""
        return _expected_rank(self.buy_, self.amount_, self.ridge_, self.non_buyers_, self.features_.to_numpy(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Expected spend over the horizon (currency), in the order of :meth:`expected_rank`."""
        if not hasattr(self, "amount_"):  # a model saved before the expected rank: one Tweedie booster
            return np.clip(self.model_.predict(self.features_.transform(X)), 0, None)
        score = self.expected_rank(X)
        return np.interp(score, self.map_score_, self.map_value_) + TIE_BREAK * score

    @property
    def feature_gain_(self) -> np.ndarray:
        """Each feature's split gain, summed over both boosters after scaling each to a total of 1."""
        total = np.zeros(len(self.features_.columns_))
        for booster in (self.buy_, self.amount_):
            if booster is not None:
                gain = booster.booster_.feature_importance("gain")
                total += gain / gain.sum() if gain.sum() > 0 else 0.0
        return total

    def value(self, X: pd.DataFrame) -> pd.DataFrame:
        """Horizon value, 12-month value, LoyaltyIndex and RFM segment per row."""
        horizon = self.predict(X)
        clv_12m = horizon * 365.0 / self.horizon_days
        r, f, m = rfm_scores(X)
        return pd.DataFrame(
            {
                "expected_value_horizon": horizon,
                "clv_12m": clv_12m,
                "loyalty_index": loyalty_index(clv_12m, X["frequency_365d"], X["aov_365d"]),
                "rfm_score": r * 100 + f * 10 + m,
                "rfm_segment": rfm_segment(r, f, m),
            },
            index=X.index,
        )


def _expected_rank(buy, amount, ridge, non_buyers: float, encoded: np.ndarray) -> np.ndarray:
    """Expected rank of spend on 0..1 (non-buyers tied at ``non_buyers / 2``) from a P(buy)
    classifier (None: everyone buys) and the two estimates of a buyer's quantile, all read from
    the encoded matrix (the boosters predict on it as on the frame they were fitted on)."""
    p_buy = np.ones(len(encoded)) if buy is None else buy.booster_.predict(encoded)
    # each estimate is clipped to the quantiles' range before the two are averaged: far outside
    # the training rows (CDNOW's long-dormant members) the ridge extrapolates, and averaged
    # unclipped it cost 0.035 Spearman there (bench/RESULTS.md)
    q = (np.clip(amount.booster_.predict(encoded), 0, 1) + np.clip(ridge.predict(encoded), 0, 1)) / 2
    return non_buyers / 2 + p_buy * (non_buyers / 2 + (1 - non_buyers) * q)


def loyalty_index(clv_12m, frequency_365d, aov_365d) -> np.ndarray:
    """LoyaltyIndex = log10(1 + LTV x repurchase frequency x AOV): one scale from lapsed to best."""
    prod = np.clip(np.asarray(clv_12m, dtype=float), 0, None) * np.asarray(frequency_365d, dtype=float)
    return np.log10(1.0 + prod * np.clip(np.asarray(aov_365d, dtype=float), 0, None))


# Fixed cut points (days / orders / currency over 365 days) rather than per-batch quintiles,
# so a member's score does not depend on who else is in the request.
RECENCY_CUTS = (14, 30, 60, 120)  # fewer days = higher score
FREQUENCY_CUTS = (1, 3, 6, 12)
MONETARY_CUTS = (50, 200, 600, 1500)


def rfm_scores(X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rec = X["recency_days"].to_numpy(dtype=float)
    r = 5 - np.searchsorted(RECENCY_CUTS, rec, side="left")
    f = 1 + np.searchsorted(FREQUENCY_CUTS, X["frequency_365d"].to_numpy(dtype=float), side="right")
    m = 1 + np.searchsorted(MONETARY_CUTS, X["monetary_365d"].to_numpy(dtype=float), side="right")
    return r.clip(1, 5), f.clip(1, 5), m.clip(1, 5)


def rfm_segment(r, f, m) -> np.ndarray:
    r, f, m = map(np.asarray, (r, f, m))
    return np.select([rule(r, f, m) for _, rule in RFM_SEGMENTS], [name for name, _ in RFM_SEGMENTS], "needs_attention")
