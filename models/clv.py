"""Member value: expected spend over a horizon (LightGBM Tweedie), LoyaltyIndex and RFM segments.

The regression reads the Feast features, buy-till-you-die scores (BG/NBD expected purchases x
Gamma-Gamma spend, ``member_btyd``) among them, and is validated point-in-time on the same holdout
window as churn; the 12-month figure annualises the horizon prediction. Tree count and size are
chosen on a fifth of the members held out (early stopping), then the booster is refitted on all.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from models.features import SIZE_PARAMS, FeatureMatrix, fit_best_size

PARAMS = {
    "objective": "tweedie",
    "tweedie_variance_power": 1.3,  # many zeros (no spend) and a long right tail
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
COMPLEXITY_GRID = (  # as for churn: lowest held-out Tweedie deviance wins
    {"num_leaves": 7, "min_child_samples": 50},
    {"num_leaves": 15, "min_child_samples": 50},
    {"num_leaves": 31, "min_child_samples": 40},
)
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

    def fit(self, X: pd.DataFrame, spend: np.ndarray, groups: np.ndarray | None = None) -> CLVModel:
        """``groups``: member ids, so that a member's rows are held out together."""
        self.features_ = FeatureMatrix().fit(X)
        M, y = self.features_.transform(X), np.clip(np.asarray(spend, dtype=float), 0, None)
        params = PARAMS | self.params
        if "n_estimators" not in self.params:  # the caller's count is kept; otherwise early stopping
            groups = np.arange(len(X)) if groups is None else np.asarray(groups)
            split = GroupShuffleSplit(n_splits=1, test_size=HELD_OUT_SHARE, random_state=self.seed)
            fit_idx, held_idx = next(split.split(M, y, groups))
            size, best = fit_best_size(
                lgb.LGBMRegressor,
                COMPLEXITY_GRID,
                params,
                self.params,
                self.seed,
                (M.iloc[fit_idx], y[fit_idx]),
                (M.iloc[held_idx], y[held_idx]),
                EARLY_STOPPING_ROUNDS,
            )
            trees = int(best.best_iteration_ or params["n_estimators"])
            params = params | size | {"n_estimators": trees}
        self.n_trees_ = int(params["n_estimators"])
        self.complexity_ = {k: params[k] for k in SIZE_PARAMS}
        self.model_ = lgb.LGBMRegressor(**params, random_state=self.seed).fit(M, y)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.clip(self.model_.predict(self.features_.transform(X)), 0, None)

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
