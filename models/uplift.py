"""Offer response and treatment effect: T- and X-learners on LightGBM, plus redemption propensity.

Rows are (member, offer) pairs: the member's Feast features at exposure time joined with
the offer's attributes by :func:`pair_features`, so the same model scores any offer in
the catalogue for a member at decision time.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from models.features import FeatureMatrix

# Response rates are a few percent and the control arm is small: shallow, heavily pooled trees
# estimate the per-arm difference with far less variance than default-sized ones.
CLASSIFIER = {
    "n_estimators": 100,
    "learning_rate": 0.05,
    "num_leaves": 4,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 2.0,
    "verbose": -1,
    "n_jobs": 2,
}
REGRESSOR = CLASSIFIER | {"objective": "regression"}
OFFER_COLUMNS = ["offer_id", "kind", "category_l1", "cost", "margin_impact"]


def pair_features(members: pd.DataFrame, offers: pd.DataFrame, pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Member features x offer attributes, with the member's spend share in the offer's category.

    ``pairs`` (member_id, offer_id, ...) selects the pairs; without it, every member is paired
    with every offer. ``members`` must be unique per member_id unless ``pairs`` carries the
    member features already (then ``members`` is ignored).
    """
    offers = offers[OFFER_COLUMNS].rename(columns={"kind": "offer_kind", "category_l1": "offer_category"})
    if pairs is None:  # every member x every offer, built by repetition (this runs per request)
        n, k = len(members), len(offers)
        out = members.iloc[np.repeat(np.arange(n), k)].reset_index(drop=True)
        for col in offers.columns:
            out[col] = np.tile(offers[col].to_numpy(), n)
    else:
        out = pairs.merge(offers, on="offer_id", how="left", validate="many_to_one")
    share = np.zeros(len(out))
    rank = np.full(len(out), 4.0)
    for k in (3, 2, 1):  # rank 1 wins where a category appears twice
        col = f"top_category_{k}"
        if col in out:
            hit = (out[col].astype("string") == out["offer_category"].astype("string")).fillna(False).to_numpy()
            share = np.where(hit, out[f"top_category_{k}_share"].fillna(0).to_numpy(), share)
            rank = np.where(hit, float(k), rank)
    out["offer_category_share"] = share
    out["offer_category_rank"] = rank
    return out


class UpliftModel:
    """P(convert | treated), P(convert | control), their difference, and P(redeem | treated).

    ``learner="t"`` fits one response model per arm; ``learner="x"`` adds the X-learner's
    second stage (imputed effects regressed per arm, blended by the treatment share).
    """

    def __init__(self, learner: str = "t", params: dict | None = None, seed: int = 7):
        if learner not in ("t", "x"):
            raise ValueError(f"learner must be 't' or 'x', not {learner!r}")
        self.learner = learner
        self.params = params or {}
        self.seed = seed

    def _clf(self, n_rows: int):
        leaf = {"min_child_samples": int(np.clip(n_rows // 20, 20, 200))}  # pooled leaves, scaled to the arm
        return lgb.LGBMClassifier(**(CLASSIFIER | leaf | self.params), random_state=self.seed)

    def fit(self, X: pd.DataFrame, treatment: np.ndarray, converted: np.ndarray, redeemed: np.ndarray | None = None):
        t = np.asarray(treatment, dtype=bool)
        y = np.asarray(converted, dtype=int)
        if t.all() or (~t).all():
            raise ValueError("uplift needs both treated and control rows; fit a PropensityModel instead")
        self.features_ = FeatureMatrix(exclude={"treatment", "propensity"}).fit(X)
        M = self.features_.transform(X)
        self.treated_model_ = self._clf(int(t.sum())).fit(M[t], y[t])
        self.control_model_ = self._clf(int((~t).sum())).fit(M[~t], y[~t])
        self.treatment_share_ = float(t.mean())
        if self.learner == "x":
            d1 = y[t] - self.control_model_.predict_proba(M[t])[:, 1]
            d0 = self.treated_model_.predict_proba(M[~t])[:, 1] - y[~t]
            for arm, d, name in ((t, d1, "tau1_"), (~t, d0, "tau0_")):
                leaf = {"min_child_samples": int(np.clip(arm.sum() // 20, 20, 200))}
                reg = lgb.LGBMRegressor(**(REGRESSOR | leaf | self.params), random_state=self.seed)
                setattr(self, name, reg.fit(M[arm], d))
        self.redeem_model_ = None
        if redeemed is not None and np.asarray(redeemed)[t].any():
            self.redeem_model_ = self._clf(int(t.sum())).fit(M[t], np.asarray(redeemed, dtype=int)[t])
        return self

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        M = self.features_.transform(X)
        # boosters directly, one thread: wrapper checks and OpenMP start-up cost more than a 12-row predict
        p1 = self.treated_model_.booster_.predict(M, num_threads=1)
        p0 = self.control_model_.booster_.predict(M, num_threads=1)
        if self.learner == "x":
            g = self.treatment_share_  # randomised design: e(x) is the constant treatment share
            uplift = g * self.tau0_.predict(M) + (1 - g) * self.tau1_.predict(M)
        else:
            uplift = p1 - p0
        p_redeem = self.redeem_model_.booster_.predict(M, num_threads=1) if self.redeem_model_ is not None else p1
        return pd.DataFrame(
            {"p_convert_treated": p1, "p_convert_control": p0, "uplift": uplift, "p_redeem": p_redeem}, index=X.index
        )


class PropensityModel:
    """P(redeem | member, offer) where no control group exists (e.g. the Complete Journey campaigns)."""

    def __init__(self, params: dict | None = None, seed: int = 7):
        self.params = params or {}
        self.seed = seed

    def fit(self, X: pd.DataFrame, redeemed: np.ndarray) -> PropensityModel:
        self.features_ = FeatureMatrix(exclude={"treatment", "propensity"}).fit(X)
        leaf = {"min_child_samples": int(np.clip(len(X) // 20, 20, 200))}
        self.model_ = lgb.LGBMClassifier(**(CLASSIFIER | leaf | self.params), random_state=self.seed)
        self.model_.fit(self.features_.transform(X), np.asarray(redeemed, dtype=int))
        return self

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        p = self.model_.predict_proba(self.features_.transform(X))[:, 1]
        # no control group: the effect is unidentified, so no uplift column is claimed
        return pd.DataFrame({"p_redeem": p, "uplift": np.nan}, index=X.index)
