"""Points-farming detection: member-level ledger features scored by an Isolation Forest.

The alert threshold is chosen so that the false-positive rate stays within a budget
(default 0.3%): from labelled legitimate members where labels exist (simulation), otherwise
as the score quantile that flags that share of members.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import beta
from sklearn.ensemble import IsolationForest

LEDGER_FEATURES = [
    "adjust_events",
    "adjust_points",
    "adjust_share",
    "unmatched_order_adjusts",
    "max_adjusts_48h",
    "max_points_48h",
    "burn_after_adjust_7d",
    "earn_events",
    "earn_points",
]


def ledger_features(ledger: pd.DataFrame, known_order_ids: pd.Index, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """One row per member: how much, how fast and against what the member's points were credited."""
    # no copy of the whole ledger (25M rows at a million members): masks, and copies of the
    # adjustments and burns only
    led = ledger if as_of is None or not (ledger["ts"] >= as_of).any() else ledger[ledger["ts"] < as_of]
    members = pd.Index(np.sort(led["member_id"].unique()), name="member_id")
    out = pd.DataFrame(index=members)
    kind = led["kind"]
    adj = led[(kind == "adjust").to_numpy()].sort_values(["member_id", "ts"], kind="stable")
    g_adj = adj.groupby("member_id")["points"]
    out["adjust_events"] = g_adj.size().reindex(members).fillna(0)
    out["adjust_points"] = g_adj.sum().reindex(members).fillna(0)
    earned = led["points"].where((kind == "earn").to_numpy()).groupby(led["member_id"]).agg(["count", "sum"])
    out["earn_events"] = earned["count"].reindex(members).fillna(0)
    out["earn_points"] = earned["sum"].reindex(members).fillna(0)
    out["adjust_share"] = out["adjust_points"] / (out["adjust_points"] + out["earn_points"]).replace(0, np.nan)
    unmatched = adj["order_id"].notna() & ~adj["order_id"].isin(known_order_ids)
    out["unmatched_order_adjusts"] = adj[unmatched].groupby("member_id").size().reindex(members).fillna(0)
    # burst size: adjusts and points credited within any 48-hour window
    if len(adj):
        roll = adj.set_index("ts").groupby("member_id")["points"].rolling("48h")
        out["max_adjusts_48h"] = roll.count().groupby(level=0).max().reindex(members).fillna(0)
        out["max_points_48h"] = roll.sum().groupby(level=0).max().reindex(members).fillna(0)
        last_adj = adj.groupby("member_id")["ts"].max()
        burn = led[(kind == "burn").to_numpy()].assign(last_adj=lambda d: d["member_id"].map(last_adj))
        quick = burn[(burn["ts"] >= burn["last_adj"]) & (burn["ts"] <= burn["last_adj"] + pd.Timedelta(days=7))]
        out["burn_after_adjust_7d"] = (-quick.groupby("member_id")["points"].sum()).reindex(members).fillna(0)
    else:
        out["max_adjusts_48h"] = out["max_points_48h"] = out["burn_after_adjust_7d"] = 0.0
    return out[LEDGER_FEATURES].fillna(0.0).astype(float)


class PointsFraudDetector:
    """Unsupervised anomaly score; ``threshold_`` set to a false-positive-rate budget."""

    def __init__(self, max_fpr: float = 0.003, n_estimators: int = 300, seed: int = 7):
        self.max_fpr = max_fpr
        self.n_estimators = n_estimators
        self.seed = seed

    def fit(self, X: pd.DataFrame) -> PointsFraudDetector:
        self.columns_ = list(X.columns)
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed, n_jobs=2)
        self.forest_.fit(np.log1p(X[self.columns_].clip(lower=0)))
        self.threshold_ = float(np.quantile(self.score(X), 1 - self.max_fpr))  # until calibrated on labels
        return self

    def score(self, X: pd.DataFrame) -> np.ndarray:
        """Higher = more anomalous."""
        return -self.forest_.score_samples(np.log1p(X[self.columns_].clip(lower=0)))

    def calibrate(self, X: pd.DataFrame, is_fraud: np.ndarray, confidence: float = 0.95) -> PointsFraudDetector:
        """Lowest threshold whose false-positive rate stays within ``max_fpr`` with ``confidence``.

        Allows ``k`` false alarms among the labelled legitimate members only while the
        Clopper-Pearson upper bound on the FPR at ``k`` is within budget, so the budget holds
        on new members too, not only on this sample.
        """
        legit = np.sort(self.score(X)[~np.asarray(is_fraud, dtype=bool)])
        n, k = len(legit), 0
        while k + 1 < n and beta.ppf(confidence, k + 2, n - k - 1) <= self.max_fpr:
            k += 1
        if beta.ppf(confidence, 1, n) > self.max_fpr:
            k = 0  # too few members to certify the budget: flag only above every legitimate score
        self.threshold_ = float(legit[n - k - 1])
        self.calibration_ = {"legitimate_members": n, "false_alarms_allowed": k, "confidence": confidence}
        return self

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        s = self.score(X)
        return pd.DataFrame({"fraud_score": s, "flagged": s > self.threshold_}, index=X.index)
