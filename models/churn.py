"""Churn risk: LightGBM, calibrated without certainties, drivers in probability points, bands and actions.

Fitting: the booster learns on 80% of the members and stops early on the other 20%; a
smooth linear score (:class:`models.linear.SignedLogLinear`) learns on the same 80% and adds
its log-odds, at :data:`LINEAR_WEIGHT`, to the booster's; a calibrator (Platt, beta or shrunk
isotonic, chosen by cross-validated Brier score) is fitted on the other 20%; then both are
refitted on every row (the booster with the same number of trees), so the calibration split
costs no discrimination.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from models.calibration import CALIBRATORS, METHODS, choose_calibrator
from models.features import SIZE_PARAMS, FeatureMatrix, fit_best_size
from models.linear import SignedLogLinear

# n_estimators is the ceiling: the booster stops when the held-out log loss has not improved
# for EARLY_STOPPING_ROUNDS (a fixed count over- or under-fits depending on the table)
DEFAULT_PARAMS = {
    "n_estimators": 1000,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 20,
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
EARLY_STOPPING_ROUNDS = 50
# Tree sizes tried on the held-out members (lowest log loss wins, each with early stopping): small
# programmes and short histories want small, well-populated leaves, large ones afford more
COMPLEXITY_GRID = (
    {"num_leaves": 7, "min_child_samples": 50},
    {"num_leaves": 15, "min_child_samples": 50},
    {"num_leaves": 31, "min_child_samples": 20},
)
DASK_TREES = 300  # Dask training has no early stopping: a fixed count unless params set one
MIN_DRIVER_POINTS = 0.01  # a driver raises the member's risk by at least one probability point
# The linear score's weight in the log-odds (0: the booster alone). Holdout AUC lead over the
# best untuned baseline, means over three seeds, booster alone -> with the linear score at weight
# 1 (bench/RESULTS.md): Online Retail +0.0048 -> +0.0068, Complete Journey +0.0031 -> +0.0079,
# CDNOW (public data outside the project) +0.0034 -> +0.0063, a simulated world +0.0008 -> +0.0009.
# Weights 0.5 to 4 were within 0.0015 of weight 1 on each.
LINEAR_WEIGHT = 1.0
LINEAR_C = 0.01  # strong L2: the score is meant to be smooth, not to fit what the trees fit


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
    """P(no purchase in the label window | features at the cutoff), calibrated.

    ``calibration``: ``"auto"`` (the lowest cross-validated Brier among Platt, beta and shrunk
    isotonic) or one of them by name. ``linear_weight``: the smooth linear score's weight in the
    log-odds (0 for the booster alone)."""

    def __init__(
        self,
        params: dict | None = None,
        calibration: str = "auto",
        calibration_share: float = 0.2,
        seed: int = 7,
        linear_weight: float = LINEAR_WEIGHT,
    ):
        self.params = params or {}
        self.calibration = calibration
        self.calibration_share = calibration_share
        self.seed = seed
        self.linear_weight = linear_weight

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        groups: np.ndarray | None = None,
        dask_client=None,
        sample_weight: np.ndarray | None = None,
    ) -> ChurnModel:
        """Booster on one part (early stopping on the other, held out by member), calibrator on the
        held-out part, then the booster refitted on all rows with the trees it chose.
        ``sample_weight``: the booster's row weights (e.g. later snapshots counting more); early
        stopping, the linear score and the calibrator read every row alike.

        With a ``distributed.Client`` the booster trains data-parallel on its workers
        (``lightgbm.DaskLGBMClassifier``) with :data:`DASK_TREES` trees (no early stopping there);
        the fitted model is the same kind either way."""
        methods = METHODS if self.calibration == "auto" else (self.calibration,)
        if any(m not in CALIBRATORS for m in methods):
            raise ValueError(f"calibration must be 'auto' or one of {', '.join(METHODS)}, not {self.calibration!r}")
        y = np.asarray(y, dtype=int)
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if w is not None and (w.shape != y.shape or not np.isfinite(w).all() or (w < 0).any() or not w.any()):
            raise ValueError("sample_weight must hold one finite, non-negative weight per row, not all zero")
        self.features_ = FeatureMatrix().fit(X)
        M = self.features_.transform(X)
        encoded = self.features_.to_numpy(X)  # what the linear score reads (codes of categories unused)
        numeric = self.features_.numeric_mask()
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        split = GroupShuffleSplit(n_splits=1, test_size=self.calibration_share, random_state=self.seed)
        fit_idx, cal_idx = next(split.split(M, y, groups))
        w_fit = None if w is None else w[fit_idx]
        params = DEFAULT_PARAMS | self.params
        if dask_client is not None:
            from models.dask_lgbm import fit_lgbm_classifier

            self.n_trees_ = int(self.params.get("n_estimators", DASK_TREES))
            params = params | {"n_estimators": self.n_trees_}
            held = fit_lgbm_classifier(dask_client, M.iloc[fit_idx], y[fit_idx], params, self.seed, w_fit)
        else:
            # the caller's tree size is kept; otherwise each size of the grid competes
            size, held = fit_best_size(
                lgb.LGBMClassifier,
                COMPLEXITY_GRID,
                params,
                self.params,
                self.seed,
                (M.iloc[fit_idx], y[fit_idx]),
                (M.iloc[cal_idx], y[cal_idx]),
                EARLY_STOPPING_ROUNDS,
                w_fit,
            )
            params = params | size
            self.n_trees_ = int(held.best_iteration_ or params["n_estimators"])
        self.complexity_ = {k: params[k] for k in SIZE_PARAMS}
        log_odds = held.booster_.predict(M.iloc[cal_idx], num_iteration=self.n_trees_, raw_score=True)
        if self.linear_weight:
            linear = SignedLogLinear(C=LINEAR_C).fit(encoded[fit_idx], y[fit_idx], numeric)
            log_odds = log_odds + self.linear_weight * linear.decision(encoded[cal_idx])
        self.calibration_method_, self.calibrator_, self.calibration_brier_ = choose_calibrator(
            _sigmoid(log_odds), y[cal_idx], methods, self.seed
        )
        # the refit adds the held-out fifth to the training rows; with the same trees its raw
        # scores differ only slightly from those the calibrator was fitted on
        refit = params | {"n_estimators": self.n_trees_}
        if dask_client is not None:
            self.booster_ = fit_lgbm_classifier(dask_client, M, y, refit, self.seed, w)
        else:
            self.booster_ = lgb.LGBMClassifier(**refit, random_state=self.seed).fit(M, y, sample_weight=w)
        self.linear_ = SignedLogLinear(C=LINEAR_C).fit(encoded, y, numeric) if self.linear_weight else None
        self.base_rate_ = float(y.mean())
        return self

    def predict_raw(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_raw_matrix(self.features_.to_numpy(X))

    def predict_raw_matrix(self, M: np.ndarray) -> np.ndarray:
        """Uncalibrated probability: the booster's log-odds plus the weighted linear score's."""
        # the booster on the encoded matrix: no wrapper checks, no pandas; one thread for few rows
        log_odds = self.booster_.booster_.predict(M, num_threads=1 if len(M) < 10_000 else 0, raw_score=True)
        if self._linear is not None:
            log_odds = log_odds + self.linear_weight * self._linear.decision(M)
        return _sigmoid(log_odds)

    @property
    def _linear(self) -> SignedLogLinear | None:
        return getattr(self, "linear_", None)  # None too in a model saved before the linear score

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self._calibrated(self.predict_raw(X))

    def _calibrated(self, raw: np.ndarray) -> np.ndarray:
        return self.calibrator_.predict(raw)  # inside calibration.PROBABILITY_BOUNDS: never 0 or 1

    def contributions(self, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated probability, members x features contributions in probability points).

        LightGBM's SHAP values split the booster's log-odds between the features, relative to the
        model's expected log-odds over its training population; the linear score's terms (also
        relative to that population) add to them feature by feature. Each member's calibrated
        probability minus the probability at that expected value is split between the features
        in the same proportions: the points add up to how far the member's risk lies from the
        population's, on the scale the service answers in."""
        threads = 1 if len(M) < 10_000 else 0
        contrib = self.booster_.booster_.predict(M, pred_contrib=True, num_threads=threads)
        shap, expected = contrib[:, :-1], contrib[:, -1]
        if self._linear is not None:
            shap = shap + self.linear_weight * self._linear.contributions(M)
        p = self._calibrated(_sigmoid(expected + shap.sum(axis=1)))
        population = self._calibrated(_sigmoid(expected))
        total = shap.sum(axis=1)
        # the calibrator is monotone, so the probability gap has the sign of the log-odds total
        scale = np.divide(p - population, total, out=np.zeros(len(M)), where=np.abs(total) > 1e-12)
        return p, shap * scale[:, None]

    def drivers(self, X: pd.DataFrame, top: int = 3) -> list[list[dict]]:
        """Top features raising each member's risk, in probability points against the population
        (at least :data:`MIN_DRIVER_POINTS`; none for members in the lowest band)."""
        M = self.features_.to_numpy(X)
        return self._drivers(M, X.to_dict("records"), top, self._calibrated(self.predict_raw_matrix(M)))

    def _points_above_lowest_band(self, M: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows above the lowest band, their contributions): the lowest band names no driver,
        so only the rows above it pay for the SHAP pass, which costs more than the prediction."""
        at_risk = np.flatnonzero(risk_band(p) != "low")
        if not len(at_risk):
            return at_risk, np.empty((0, M.shape[1]))
        return at_risk, self.contributions(M[at_risk])[1]

    def _drivers(self, M: np.ndarray, records: list[dict], top: int, p: np.ndarray) -> list[list[dict]]:
        """Each row's drivers, given its calibrated probability ``p``."""
        drivers: list[list[dict]] = [[] for _ in range(len(M))]
        at_risk, points = self._points_above_lowest_band(M, p)
        names = self.features_.columns_
        for row, i in enumerate(at_risk):
            drivers[i] = [
                {
                    "feature": names[j],
                    "value": _plain(records[i].get(names[j])),
                    "contribution": round(float(points[row, j]), 4),
                }
                for j in np.argsort(-points[row])[:top]
                if points[row, j] >= MIN_DRIVER_POINTS
            ]
        return drivers

    def churn_list(self, X: pd.DataFrame, drivers: bool = False) -> pd.DataFrame:
        """Probability, band and action for many members at once (CRM lists, care tasks), on
        arrays; with ``drivers`` also the feature raising each member's risk most (a SHAP pass
        over the members above the lowest band, which costs more than the prediction itself)."""
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
            at_risk, points = self._points_above_lowest_band(M, p)
            top_driver = np.full(len(M), None, dtype=object)
            if len(at_risk):
                top = points.argmax(axis=1)
                names = np.asarray(self.features_.columns_, dtype=object)[top]
                raises = points[np.arange(len(at_risk)), top] >= MIN_DRIVER_POINTS
                top_driver[at_risk] = np.where(raises, names, None)
            out["top_driver"] = top_driver
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
        drivers = self._drivers(M, records, top, p)
        return [
            {"churn_probability": p[i], "risk_band": band[i], "suggested_action": action[i], "top_drivers": drivers[i]}
            for i in range(len(records))
        ]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


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
