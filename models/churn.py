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


BAND_NAMES = np.array([name for _, name in reversed(BANDS)], dtype=object)  # low .. critical
ACTIONS = np.array(
    [
        "churn_warning_level_3: downgrade notice + win-back offer",
        "churn_warning_level_2: retention offer via preferred channel",
        "churn_warning_level_1: personalised re-engagement message",
        "care_task: service check-in, remind of benefits and expiring points",
        "none: keep nurturing",
    ],
    dtype=object,
)
ACTION_OF_BAND = {"critical": 1, "high": 2, "medium": 3}  # index into ACTIONS; other bands: 4


def risk_band(p: np.ndarray) -> np.ndarray:
    """Band of each calibrated probability (a missing probability is "low")."""
    p = np.asarray(p, dtype=float)
    lows = np.array([lo for lo, _ in reversed(BANDS)][1:])  # 0.25, 0.5, 0.75
    idx = np.searchsorted(lows, p, side="right")
    idx[np.isnan(p)] = 0
    return BAND_NAMES[idx]


def suggested_action(band: np.ndarray, recency_days: np.ndarray) -> np.ndarray:
    """Early-warning ladder: care task, then churn warnings by level; 90 idle days = downgrade review."""
    rec = np.asarray(recency_days, dtype=float)
    by_band = pd.Series(np.asarray(band, dtype=object)).map(ACTION_OF_BAND).fillna(4).to_numpy(dtype=int)
    return ACTIONS[np.where(rec >= DOWNGRADE_IDLE_DAYS, 0, by_band)]


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
        return self.predict_raw_matrix(self.features_.to_numpy(X))

    def predict_raw_matrix(self, M: np.ndarray) -> np.ndarray:
        # the booster on the encoded matrix: no wrapper checks, no pandas; one thread for few rows
        return self.booster_.booster_.predict(M, num_threads=1 if len(M) < 10_000 else 0)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self._calibrated(self.predict_raw(X))

    def _calibrated(self, raw: np.ndarray) -> np.ndarray:
        if self.calibration == "isotonic":
            return self.calibrator_.predict(raw)
        return self.calibrator_.predict_proba(_logit(raw)[:, None])[:, 1]

    def drivers(self, X: pd.DataFrame, top: int = 3) -> list[list[dict]]:
        """Top features pushing each member's risk up (LightGBM SHAP values, log-odds)."""
        return self._drivers(self.features_.to_numpy(X), X.to_dict("records"), top)

    def _drivers(self, M: np.ndarray, records: list[dict], top: int) -> list[list[dict]]:
        threads = 1 if len(M) < 10_000 else 0
        contrib = self.booster_.booster_.predict(M, pred_contrib=True, num_threads=threads)[:, :-1]
        names = self.features_.columns_
        order = np.argsort(-contrib, axis=1)[:, :top]
        return [
            [
                {
                    "feature": names[j],
                    "value": _plain(records[i].get(names[j])),
                    "contribution": round(float(contrib[i, j]), 4),
                }
                for j in idx
                if contrib[i, j] > 0
            ]
            for i, idx in enumerate(order)
        ]

    def churn_list(self, X: pd.DataFrame, drivers: bool = False) -> pd.DataFrame:
        """Probability, band and action for many members at once (CRM lists, care tasks), on
        arrays; with ``drivers`` also the feature raising each member's risk most (a SHAP pass,
        which costs more than the prediction itself)."""
        M = self.features_.to_numpy(X)
        p = self._calibrated(self.predict_raw_matrix(M))
        band = risk_band(p)
        recency = X["recency_days"] if "recency_days" in X else pd.Series(0.0, index=X.index)
        out = pd.DataFrame(
            {
                "churn_probability": p,
                "risk_band": band,
                "suggested_action": suggested_action(band, pd.to_numeric(recency, errors="coerce").fillna(0.0)),
            },
            index=X.index,
        )
        if drivers:
            contrib = self.booster_.booster_.predict(M, pred_contrib=True, num_threads=0)[:, :-1]
            top = contrib.argmax(axis=1)
            names = np.asarray(self.features_.columns_, dtype=object)[top]
            out["top_driver"] = np.where(contrib[np.arange(len(M)), top] > 0, names, None)
        return out

    def explain(self, X: pd.DataFrame, top: int = 3) -> pd.DataFrame:
        """Probability, band, drivers and suggested action per row (what the service returns)."""
        return pd.DataFrame(self.explain_records(X.to_dict("records"), top), index=X.index)

    def explain_records(self, records: list[dict], top: int = 3) -> list[dict]:
        """:meth:`explain` on plain rows of features (the service's hot path: no frame is built)."""
        M = self.features_.encode({c: [r.get(c) for r in records] for c in self.features_.columns_}, len(records))
        p = self._calibrated(self.predict_raw_matrix(M))
        band = risk_band(p)
        recency = np.array([_number(r.get("recency_days", 0.0)) for r in records], dtype=float)
        action = suggested_action(band, recency)
        drivers = self._drivers(M, records, top)
        return [
            {"churn_probability": p[i], "risk_band": band[i], "suggested_action": action[i], "top_drivers": drivers[i]}
            for i in range(len(records))
        ]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


def _number(v) -> float:
    try:
        return float(v) if v is not None else np.nan
    except (TypeError, ValueError):
        return np.nan
