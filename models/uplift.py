"""Offer response and treatment effect on LightGBM: T-, X-, DR- and R-learners, plus redemption propensity.

Rows are (member, offer) pairs: the member's Feast features at exposure time joined with
the offer's attributes by :func:`pair_features`. Every learner is one model over all offers
(offer id, kind, category, cost and the member's affinity to its category are features), so
an offer with few exposures borrows strength from similar ones, and the same model scores any
offer in the catalogue for a member at decision time.
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
LEARNERS = ("t", "x", "dr", "r")  # T-, X-, doubly robust and R-learner ("auto" in the job picks one)
CROSS_FIT_FOLDS = 2  # nuisance models of the DR-/R-learners are fitted on the other fold
MIN_VALUE_ROWS = 30  # converted responses with revenue needed to learn what a conversion is worth
OFFER_COLUMNS = ["offer_id", "kind", "category_l1", "cost", "margin_impact"]
# A control member never saw the offer: what it is (id, kind, cost, margin) cannot move their
# conversion; only what the conversion measures (its category, and the member's affinity to it)
# can. The control arm's response model is blind to these columns, which removes the variance
# that few control rows would otherwise put into each offer's effect.
OFFER_ONLY_COLUMNS = {"offer_id", "offer_kind", "cost", "margin_impact"}


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


def _booster(estimator, defaults: dict, n_rows: int, params: dict, seed: int):
    """A LightGBM estimator with pooled leaves scaled to the rows it fits (``params`` win)."""
    leaf = {"min_child_samples": int(np.clip(n_rows // 20, 20, 200))}
    return estimator(**(defaults | leaf | params), random_state=seed)


def _value_model(make_reg, M: pd.DataFrame, revenue, responded: np.ndarray, w: np.ndarray):
    """A regressor of the revenue of a responding exposure (its conversion order) on the pair's
    features, or None with fewer than :data:`MIN_VALUE_ROWS` such rows. A response is usually a
    smaller order than the member's average basket (one promoted category, not a weekly shop):
    the incremental value of an offer is uplift x this, not x the member's average order."""
    if revenue is None:
        return None
    revenue = np.asarray(revenue, dtype=float)
    rows = responded & np.isfinite(revenue) & (revenue > 0)
    if rows.sum() < MIN_VALUE_ROWS:
        return None
    return make_reg(int(rows.sum())).fit(M[rows], revenue[rows], sample_weight=w[rows])


def _order_value(model, M: np.ndarray, threads: int) -> np.ndarray:
    """The value model's prediction (at least 0), NaN where none was learned (old models included)."""
    value_model = getattr(model, "value_model_", None)
    if value_model is None:
        return np.full(len(M), np.nan)
    return np.maximum(value_model.booster_.predict(M, num_threads=threads), 0.0)


class UpliftModel:
    """P(convert | treated), P(convert | control), their difference (the uplift), P(redeem | treated)
    and the revenue of a conversion (``order_value``, where the responses carry revenue).

    ``learner``:

    - ``"t"``: one response model per arm; uplift = their difference.
    - ``"x"``: the X-learner's second stage on top (imputed effects regressed per arm, blended
      by the treatment share).
    - ``"dr"``: the doubly robust learner: cross-fitted arm models give each row the AIPW
      pseudo-outcome ``mu1 - mu0 + t (y - mu1) / e - (1 - t) (y - mu0) / (1 - e)``, one regressor
      fits it. Unbiased where either the arm models or the treatment propensity ``e`` are right.
    - ``"r"``: the R-learner: residualises conversion on a cross-fitted ``m(x) = E[y | x]`` and
      treatment on ``e``, then fits the effect by weighted regression of ``(y - m) / (t - e)``
      with weights ``(t - e)^2`` (Nie & Wager).

    Every learner also fits the two arm models on all rows: they give the response probabilities
    the service reports next to the effect. ``offer_blind_control``: the control arm's models do
    not read :data:`OFFER_ONLY_COLUMNS` (see there).
    """

    def __init__(self, learner: str = "t", params: dict | None = None, seed: int = 7, offer_blind_control: bool = True):
        if learner not in LEARNERS:
            raise ValueError(f"learner must be one of {', '.join(LEARNERS)}, not {learner!r}")
        self.learner = learner
        self.params = params or {}
        self.seed = seed
        self.offer_blind_control = offer_blind_control

    def _clf(self, n_rows: int):
        return _booster(lgb.LGBMClassifier, CLASSIFIER, n_rows, self.params, self.seed)

    def _reg(self, n_rows: int):
        return _booster(lgb.LGBMRegressor, REGRESSOR, n_rows, self.params, self.seed)

    def fit(
        self,
        X: pd.DataFrame,
        treatment: np.ndarray,
        converted: np.ndarray,
        redeemed: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        treatment_propensity: np.ndarray | None = None,
        revenue: np.ndarray | None = None,
    ):
        """``sample_weight``: e.g. inverse propensities of rows a targeting policy chose, so that
        each arm's response model sees the population, not the policy's favourites.
        ``treatment_propensity``: each row's known P(treated) by design (the campaign's treated
        share); the constant overall share without it. Used by the DR- and R-learners.
        ``revenue``: each exposure's response revenue; the converted rows of both arms teach
        ``order_value``."""
        t = np.asarray(treatment, dtype=bool)
        y = np.asarray(converted, dtype=int)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if t.all() or (~t).all():
            raise ValueError("uplift needs both treated and control rows; fit a PropensityModel instead")
        e = np.full(len(y), t.mean()) if treatment_propensity is None else np.asarray(treatment_propensity, float)
        if not ((e > 0) & (e < 1)).all():
            raise ValueError("treatment_propensity must lie strictly between 0 and 1 for every row")
        self.features_ = FeatureMatrix(exclude={"treatment", "propensity"}).fit(X)
        M = self.features_.transform(X)
        blind = OFFER_ONLY_COLUMNS if self.offer_blind_control else set()
        self.control_columns_ = [j for j, c in enumerate(self.features_.columns_) if c not in blind]
        C = M.iloc[:, self.control_columns_]
        self.treated_model_ = self._clf(int(t.sum())).fit(M[t], y[t], sample_weight=w[t])
        self.control_model_ = self._clf(int((~t).sum())).fit(C[~t], y[~t], sample_weight=w[~t])
        self.treatment_share_ = float(t.mean())
        if self.learner == "x":
            d1 = y[t] - self.control_model_.predict_proba(C[t])[:, 1]
            d0 = self.treated_model_.predict_proba(M[~t])[:, 1] - y[~t]
            self.tau1_ = self._reg(int(t.sum())).fit(M[t], d1, sample_weight=w[t])
            self.tau0_ = self._reg(int((~t).sum())).fit(M[~t], d0, sample_weight=w[~t])
        elif self.learner == "dr":
            mu1, mu0 = self._cross_fit_arms(X, M, C, t, y, w)
            pseudo = mu1 - mu0 + t * (y - mu1) / e - (~t) * (y - mu0) / (1 - e)
            self.tau_ = self._reg(len(y)).fit(M, pseudo, sample_weight=w)
        elif self.learner == "r":
            m = self._cross_fit_outcome(X, M, y, w)
            r = t - e
            self.tau_ = self._reg(len(y)).fit(M, (y - m) / r, sample_weight=w * r**2)
        self.redeem_model_ = None
        if redeemed is not None and np.asarray(redeemed)[t].any():
            self.redeem_model_ = self._clf(int(t.sum())).fit(
                M[t], np.asarray(redeemed, dtype=int)[t], sample_weight=w[t]
            )
        self.value_model_ = _value_model(self._reg, M, revenue, y.astype(bool), w)
        return self

    def _folds(self, X: pd.DataFrame) -> np.ndarray:
        """Each row's cross-fitting fold; all rows of one member share a fold, so that no nuisance
        model has seen the member it predicts for."""
        rng = np.random.default_rng(self.seed)
        if "member_id" in X.columns:
            codes, uniques = pd.factorize(X["member_id"])
            return rng.permutation(len(uniques))[codes] % CROSS_FIT_FOLDS
        return rng.permutation(len(X)) % CROSS_FIT_FOLDS

    def _cross_fit_arms(self, X, M, C, t, y, w) -> tuple[np.ndarray, np.ndarray]:
        """Out-of-fold P(convert | treated) and P(convert | control) for every row."""
        fold = self._folds(X)
        mu1, mu0 = np.empty(len(y)), np.empty(len(y))
        for k in range(CROSS_FIT_FOLDS):
            fit, out = fold != k, fold == k
            for arm, mu, A in ((t, mu1, M), (~t, mu0, C)):
                rows = fit & arm
                if not out.any():
                    continue
                if y[rows].min() == y[rows].max():  # one class only in this fold's arm
                    mu[out] = float(y[rows].mean()) if rows.any() else float(y[arm].mean())
                    continue
                model = self._clf(int(rows.sum())).fit(A[rows], y[rows], sample_weight=w[rows])
                mu[out] = model.predict_proba(A[out])[:, 1]
        return mu1, mu0

    def _cross_fit_outcome(self, X, M, y, w) -> np.ndarray:
        """Out-of-fold P(convert) whatever the arm, for every row."""
        fold = self._folds(X)
        m = np.empty(len(y))
        for k in range(CROSS_FIT_FOLDS):
            fit, out = fold != k, fold == k
            if not out.any():
                continue
            if y[fit].min() == y[fit].max():
                m[out] = float(y[fit].mean())
                continue
            model = self._clf(int(fit.sum())).fit(M[fit], y[fit], sample_weight=w[fit])
            m[out] = model.predict_proba(M[out])[:, 1]
        return m

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.predict_matrix(self.features_.to_numpy(X)), index=X.index)

    def predict_matrix(self, M: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`predict` on an encoded matrix (``features_.encode``/``to_numpy``): the hot path."""
        threads = 1 if len(M) < 10_000 else 0  # OpenMP start-up costs more than a small predict
        p1 = self.treated_model_.booster_.predict(M, num_threads=threads)
        control = getattr(self, "control_columns_", None)  # models saved before it: every column
        p0 = self.control_model_.booster_.predict(M if control is None else M[:, control], num_threads=threads)
        if self.learner == "x":
            g = self.treatment_share_  # randomised design: e(x) is the constant treatment share
            tau0 = self.tau0_.booster_.predict(M, num_threads=threads)
            tau1 = self.tau1_.booster_.predict(M, num_threads=threads)
            uplift = g * tau0 + (1 - g) * tau1
        elif self.learner in ("dr", "r"):
            uplift = self.tau_.booster_.predict(M, num_threads=threads)
        else:
            uplift = p1 - p0
        redeem = self.redeem_model_
        p_redeem = redeem.booster_.predict(M, num_threads=threads) if redeem is not None else p1
        return {
            "p_convert_treated": p1,
            "p_convert_control": p0,
            "uplift": uplift,
            "p_redeem": p_redeem,
            "order_value": _order_value(self, M, threads),
        }


class PropensityModel:
    """P(redeem | member, offer) where no control group exists (e.g. the Complete Journey campaigns)."""

    def __init__(self, params: dict | None = None, seed: int = 7):
        self.params = params or {}
        self.seed = seed

    def fit(self, X: pd.DataFrame, redeemed: np.ndarray, revenue: np.ndarray | None = None) -> PropensityModel:
        """``revenue``: each exposure's response revenue; the redeemed rows teach ``order_value``."""
        self.features_ = FeatureMatrix(exclude={"treatment", "propensity"}).fit(X)
        M, y = self.features_.transform(X), np.asarray(redeemed, dtype=int)
        self.model_ = _booster(lgb.LGBMClassifier, CLASSIFIER, len(y), self.params, self.seed).fit(M, y)
        self.value_model_ = _value_model(
            lambda n: _booster(lgb.LGBMRegressor, REGRESSOR, n, self.params, self.seed),
            M,
            revenue,
            y.astype(bool),
            np.ones(len(y)),
        )
        return self

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.predict_matrix(self.features_.to_numpy(X)), index=X.index)

    def predict_matrix(self, M: np.ndarray) -> dict[str, np.ndarray]:
        threads = 1 if len(M) < 10_000 else 0
        p = self.model_.booster_.predict(M, num_threads=threads)
        # no control group: the effect is unidentified, so no uplift column is claimed
        return {"p_redeem": p, "uplift": np.full(len(M), np.nan), "order_value": _order_value(self, M, threads)}
