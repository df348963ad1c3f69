"""Churn risk: LightGBM with a held-out calibration fold, per-member drivers, bands and actions."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit

from models.features import FeatureMatrix

DEFAULT_PARAMS = {
    "n_estimators": 300,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 40,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "verbose": -1,
    "n_jobs": 2,
}
# Risk bands on the calibrated probability (lower bound, band).
BANDS = ((0.75, "critical"), (0.5, "high"), (0.25, "medium"), (0.0, "low"))
DOWNGRADE_IDLE_DAYS = 90  # three months without a purchase = tier downgrade


def risk_band(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.select([p >= lo for lo, _ in BANDS], [name for _, name in BANDS], "low")


def suggested_action(band: np.ndarray, recency_days: np.ndarray) -> np.ndarray:
    """Early-warning ladder: care task, then churn warnings by level; 90 idle days = downgrade review."""
    band, rec = np.asarray(band), np.asarray(recency_days, dtype=float)
    return np.select(
        [
            rec >= DOWNGRADE_IDLE_DAYS,
            band == "critical",
            band == "high",
            band == "medium",
        ],
        [
            "churn_warning_level_3: downgrade notice + win-back offer",
            "churn_warning_level_2: retention offer via preferred channel",
            "churn_warning_level_1: personalised re-engagement message",
            "care_task: service check-in, remind of benefits and expiring points",
        ],
        "none: keep nurturing",
    )


class ChurnModel:
    """P(no purchase in the label window | features at the cutoff), calibrated."""

    def __init__(
        self, params: dict | None = None, calibration: str = "isotonic", calibration_share: float = 0.2, seed: int = 7
    ):
        self.params = params or {}
        self.calibration = calibration
        self.calibration_share = calibration_share
        self.seed = seed

    def fit(self, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None = None, dask_client=None) -> ChurnModel:
        """Fit the booster on one part and the calibrator on a held-out part (split by member).

        With a ``distributed.Client`` the booster trains data-parallel on its workers
        (``lightgbm.DaskLGBMClassifier``); the fitted model is the same kind either way."""
        y = np.asarray(y, dtype=int)
        self.features_ = FeatureMatrix().fit(X)
        M = self.features_.transform(X)
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        split = GroupShuffleSplit(n_splits=1, test_size=self.calibration_share, random_state=self.seed)
        fit_idx, cal_idx = next(split.split(M, y, groups))
        params = DEFAULT_PARAMS | self.params
        if dask_client is not None:
            from models.dask_lgbm import fit_lgbm_classifier

            self.booster_ = fit_lgbm_classifier(dask_client, M.iloc[fit_idx], y[fit_idx], params, self.seed)
        else:
            self.booster_ = lgb.LGBMClassifier(**params, random_state=self.seed).fit(M.iloc[fit_idx], y[fit_idx])
        raw = self.booster_.predict_proba(M.iloc[cal_idx])[:, 1]
        if self.calibration == "isotonic":
            self.calibrator_ = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y[cal_idx])
        elif self.calibration == "platt":
            self.calibrator_ = LogisticRegression().fit(_logit(raw)[:, None], y[cal_idx])
        else:
            raise ValueError(f"calibration must be 'isotonic' or 'platt', not {self.calibration!r}")
        self.base_rate_ = float(y.mean())
        return self

    def predict_raw(self, X: pd.DataFrame) -> np.ndarray:
        # the booster directly, one thread: cheaper than the wrapper for the service's few rows
        return self.booster_.booster_.predict(self.features_.transform(X), num_threads=1)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        raw = self.predict_raw(X)
        if self.calibration == "isotonic":
            return self.calibrator_.predict(raw)
        return self.calibrator_.predict_proba(_logit(raw)[:, None])[:, 1]

    def drivers(self, X: pd.DataFrame, top: int = 3) -> list[list[dict]]:
        """Top features pushing each member's risk up (LightGBM SHAP values, log-odds)."""
        contrib = self.booster_.booster_.predict(self.features_.transform(X), pred_contrib=True, num_threads=1)[:, :-1]
        names = np.array(self.features_.columns_)
        order = np.argsort(-contrib, axis=1)[:, :top]
        out = []
        for i, idx in enumerate(order):
            out.append(
                [
                    {
                        "feature": str(names[j]),
                        "value": _plain(X.iloc[i][names[j]]),
                        "contribution": round(float(contrib[i, j]), 4),
                    }
                    for j in idx
                    if contrib[i, j] > 0
                ]
            )
        return out

    def explain(self, X: pd.DataFrame, top: int = 3) -> pd.DataFrame:
        """Probability, band, drivers and suggested action per row (what the service returns)."""
        p = self.predict_proba(X)
        band = risk_band(p)
        recency = X["recency_days"].to_numpy() if "recency_days" in X else np.zeros(len(X))
        return pd.DataFrame(
            {
                "churn_probability": p,
                "risk_band": band,
                "suggested_action": suggested_action(band, recency),
                "top_drivers": self.drivers(X, top),
            },
            index=X.index,
        )


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v
