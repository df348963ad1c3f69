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


class PairEncoder:
    """Encodes one member x every offer of a catalogue straight into a model matrix: the offer
    columns are encoded once, the member's features once per call. Equal to
    ``features.to_numpy(pair_features(member, offers))`` without building a frame."""

    def __init__(self, features: FeatureMatrix, offers: pd.DataFrame):
        self.features = features
        own = offers[OFFER_COLUMNS].rename(columns={"kind": "offer_kind", "category_l1": "offer_category"})
        self.offer_columns = {c: own[c].to_numpy() for c in own.columns}
        self.offer_category = own["offer_category"].astype("string").to_numpy(dtype=object, na_value=None)
        self.n_offers = len(own)

    def encode(self, member: dict) -> np.ndarray:
        return self.features.encode(self.columns(member), self.n_offers)

    def columns(self, member: dict) -> dict:
        """The pair columns: the member's values (scalars), the offers' and the category match (arrays)."""
        columns = dict(member)
        columns.update(self.offer_columns)
        share = np.zeros(self.n_offers)
        rank = np.full(self.n_offers, 4.0)
        for k in (3, 2, 1):  # rank 1 wins where a category appears twice, as in pair_features
            top = member.get(f"top_category_{k}")
            if top is None or (isinstance(top, float) and np.isnan(top)):
                continue
            hit = self.offer_category == str(top)
            value = member.get(f"top_category_{k}_share")
            value = 0.0 if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)
            share = np.where(hit, value, share)
            rank = np.where(hit, float(k), rank)
        columns["offer_category_share"], columns["offer_category_rank"] = share, rank
        return columns

    def encode_many(self, members: pd.DataFrame) -> np.ndarray:
        """Every member x every offer (member-major, offers in catalogue order) as one model
        matrix: the member columns encoded once per member and repeated, the offer columns
        encoded once and tiled. Equal to ``features.to_numpy(pair_features(members, offers))``."""
        n, k = len(members), self.n_offers
        own = {c: members[c].to_numpy() for c in self.features.columns_ if c in members.columns}
        M = np.repeat(self.features.encode(own, n), k, axis=0)
        per_offer = self.features.encode(self.offer_columns, k)
        pair_columns = {*self.offer_columns, "offer_category_share", "offer_category_rank"}
        for j, c in enumerate(self.features.columns_):
            if c in pair_columns:
                M[:, j] = np.tile(per_offer[:, j], n)
        share, rank = self.category_match(members)
        for c, values in (("offer_category_share", share), ("offer_category_rank", rank)):
            if c in self.features.columns_:
                M[:, self.features.columns_.index(c)] = values.ravel()
        return M

    def category_match(self, members: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(members x offers) arrays: the member's spend share in each offer's category and the
        category's rank among the member's top three (4 = not among them), as in pair_features."""
        n, k = len(members), self.n_offers
        share, rank = np.zeros((n, k)), np.full((n, k), 4.0)
        offer_known = pd.notna(self.offer_category)
        for top in (3, 2, 1):  # rank 1 wins where a category appears twice
            if f"top_category_{top}" not in members.columns:
                continue
            cats = members[f"top_category_{top}"].astype("string").to_numpy(dtype=object, na_value=None)
            hit = (cats[:, None] == self.offer_category[None, :]) & pd.notna(cats)[:, None] & offer_known[None, :]
            values = pd.to_numeric(members[f"top_category_{top}_share"], errors="coerce").fillna(0).to_numpy()
            share = np.where(hit, values[:, None], share)
            rank = np.where(hit, float(top), rank)
        return share, rank


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

    def fit(
        self,
        X: pd.DataFrame,
        treatment: np.ndarray,
        converted: np.ndarray,
        redeemed: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
    ):
        """``sample_weight``: e.g. inverse propensities of rows a targeting policy chose, so that
        each arm's response model sees the population, not the policy's favourites."""
        t = np.asarray(treatment, dtype=bool)
        y = np.asarray(converted, dtype=int)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if t.all() or (~t).all():
            raise ValueError("uplift needs both treated and control rows; fit a PropensityModel instead")
        self.features_ = FeatureMatrix(exclude={"treatment", "propensity"}).fit(X)
        M = self.features_.transform(X)
        self.treated_model_ = self._clf(int(t.sum())).fit(M[t], y[t], sample_weight=w[t])
        self.control_model_ = self._clf(int((~t).sum())).fit(M[~t], y[~t], sample_weight=w[~t])
        self.treatment_share_ = float(t.mean())
        if self.learner == "x":
            d1 = y[t] - self.control_model_.predict_proba(M[t])[:, 1]
            d0 = self.treated_model_.predict_proba(M[~t])[:, 1] - y[~t]
            for arm, d, name in ((t, d1, "tau1_"), (~t, d0, "tau0_")):
                leaf = {"min_child_samples": int(np.clip(arm.sum() // 20, 20, 200))}
                reg = lgb.LGBMRegressor(**(REGRESSOR | leaf | self.params), random_state=self.seed)
                setattr(self, name, reg.fit(M[arm], d, sample_weight=w[arm]))
        self.redeem_model_ = None
        if redeemed is not None and np.asarray(redeemed)[t].any():
            self.redeem_model_ = self._clf(int(t.sum())).fit(
                M[t], np.asarray(redeemed, dtype=int)[t], sample_weight=w[t]
            )
        return self

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.predict_matrix(self.features_.to_numpy(X)), index=X.index)

    def predict_matrix(self, M: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`predict` on an encoded matrix (``features_.encode``/``to_numpy``): the hot path."""
        threads = 1 if len(M) < 10_000 else 0  # OpenMP start-up costs more than a small predict
        p1 = self.treated_model_.booster_.predict(M, num_threads=threads)
        p0 = self.control_model_.booster_.predict(M, num_threads=threads)
        if self.learner == "x":
            g = self.treatment_share_  # randomised design: e(x) is the constant treatment share
            tau0 = self.tau0_.booster_.predict(M, num_threads=threads)
            tau1 = self.tau1_.booster_.predict(M, num_threads=threads)
            uplift = g * tau0 + (1 - g) * tau1
        else:
            uplift = p1 - p0
        redeem = self.redeem_model_
        p_redeem = redeem.booster_.predict(M, num_threads=threads) if redeem is not None else p1
        return {"p_convert_treated": p1, "p_convert_control": p0, "uplift": uplift, "p_redeem": p_redeem}


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
        return pd.DataFrame(self.predict_matrix(self.features_.to_numpy(X)), index=X.index)

    def predict_matrix(self, M: np.ndarray) -> dict[str, np.ndarray]:
        p = self.model_.booster_.predict(M, num_threads=1 if len(M) < 10_000 else 0)
        # no control group: the effect is unidentified, so no uplift column is claimed
        return {"p_redeem": p, "uplift": np.full(len(M), np.nan)}
