"""Two-stage recommendations: candidate generators, then a learning-to-rank re-ranker.

Stage one asks each generator (ALS, item-item, buy-again, popularity) for its top items per
member. Stage two scores every candidate with a LightGBM ``LGBMRanker`` (lambdarank) over
member x item features: each generator's score and rank, how often and how recently the member
bought the item, the member's affinity to the item's category, the item's popularity and trend.

The ranker learns from one window (generators fitted before it, labels = items bought in it)
and is applied to the next with the generators refitted on all history: :meth:`refit` keeps
the ranker and replaces the generators.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.cf import BuyAgainRecommender, CFRecommender, PopularityRecommender, PurchasePairs

CANDIDATES = 50  # per generator and member
RANKER = {
    "objective": "lambdarank",
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 50,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "verbose": -1,
    "n_jobs": 2,
}
BUY_AGAIN_HALF_LIFE_DAYS = 90
TREND_DAYS = 30  # item trend: buyers in the last 30 days against the 60 before
NEVER = 9999.0  # days since the member bought the item: never
FEATURES = [
    "als_score",
    "als_rank",
    "item_item_score",
    "item_item_rank",
    "buy_again_score",
    "buy_again_rank",
    "popularity_rank",
    "times_bought",
    "days_since_bought",
    "category_affinity",
    "item_buyers_90d",
    "item_trend",
    "member_items",
    "member_days_idle",
]


class TwoStageRecommender:
    """Generators + ``LGBMRanker``, behind the same ``recommend`` API as the other recommenders."""

    algorithm = "two_stage"

    def __init__(
        self,
        als_params: dict | None = None,
        item_item_params: dict | None = None,
        n_candidates: int = CANDIDATES,
        ranker_params: dict | None = None,
        seed: int = 7,
    ):
        self.als_params = als_params or {}
        self.item_item_params = item_item_params or {}
        self.n_candidates = n_candidates
        self.ranker_params = ranker_params or {}
        self.seed = seed

    # -- stage one ---------------------------------------------------------------------------
    def fit_generators(
        self,
        lines: pd.DataFrame,
        as_of: pd.Timestamp,
        item_category: pd.Series,
        items: list[str] | None = None,
        segments: pd.Series | None = None,
    ) -> TwoStageRecommender:
        """Fit every generator and the member x item statistics on ``lines`` (member_id, item_id,
        quantity, ts) before ``as_of``."""
        as_of = pd.Timestamp(as_of)
        if len(lines) and lines["ts"].max() >= as_of:  # a copy only where lines reach past as_of
            lines = lines[lines["ts"] < as_of]
        pairs = PurchasePairs(lines)  # every generator's weights from one pass over the lines

        def weights(params: dict) -> pd.DataFrame:
            return pairs.weights(as_of, params.get("half_life_days", BUY_AGAIN_HALF_LIFE_DAYS))

        def cf(algorithm: str, params: dict) -> CFRecommender:
            rest = {k: v for k, v in params.items() if k != "half_life_days"}
            return CFRecommender(algorithm=algorithm, seed=self.seed, **rest).fit(weights(params), items, segments)

        recent = weights({})
        self.generators_ = {
            "als": cf("als", self.als_params),
            "item_item": cf("item_item", self.item_item_params),
            "buy_again": BuyAgainRecommender().fit(recent, items, segments),
            "popularity": PopularityRecommender().fit(recent, items, segments),
        }
        base = self.generators_["buy_again"]
        self.items_, self.item_index_, self.member_index_ = base.items_, base.item_index_, base.member_index_
        self._fit_statistics(pairs, as_of, item_category)
        return self

    def _fit_statistics(self, pairs: PurchasePairs, as_of: pd.Timestamp, item_category: pd.Series) -> None:
        """Per (member, item) pair: days since last bought and times bought; per member: category
        shares, items bought, days idle; per item: recent buyers and trend. From the pairs, not
        the lines: a million members' 57M lines would be held several times over."""
        rows = pd.Series(pairs.member_id).map(self.member_index_).to_numpy(dtype=np.int64)
        cols = pd.Series(pairs.item_id).map(self.item_index_).to_numpy(dtype=np.int64)
        shape = (len(self.member_index_), len(self.items_))
        age = pd.Series(pairs.age_days(as_of))
        youngest = age.groupby(pairs.inverse_).min().to_numpy()  # per pair, in pair order
        times = np.bincount(pairs.inverse_, minlength=len(pairs)).astype(float)
        del age
        # stored as 1 + days so that "bought today" is not an empty cell
        self.last_bought_ = sp.csr_matrix((youngest + 1.0, (rows, cols)), shape=shape)
        self.times_bought_ = sp.csr_matrix((times, (rows, cols)), shape=shape)
        cats = item_category.reindex(self.items_).fillna("UNKNOWN").astype(str)
        self.categories_, self.item_cat_ = np.unique(cats.to_numpy(), return_inverse=True)
        by_cat = sp.csr_matrix((times, (rows, self.item_cat_[cols])), shape=(shape[0], len(self.categories_)))
        totals = np.asarray(by_cat.sum(axis=1)).ravel()
        self.cat_share_ = sp.diags(1.0 / np.maximum(totals, 1.0)) @ by_cat
        self.member_items_ = np.asarray((self.times_bought_ > 0).sum(axis=1)).ravel().astype(float)
        self.member_idle_ = np.full(shape[0], NEVER)
        idle = pd.Series(youngest).groupby(rows).min()
        self.member_idle_[idle.index.to_numpy()] = idle.to_numpy()
        # buyers of each item: members whose latest purchase of it is within the period
        self.item_buyers_ = np.bincount(cols[youngest < 90], minlength=shape[1]).astype(float)
        last = np.bincount(cols[youngest < TREND_DAYS], minlength=shape[1])
        self.item_trend_ = (last + 1.0) / ((self.item_buyers_ - last) / 2.0 + 1.0)

    def _candidates(self, members: list, exclude_owned: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (member position, candidate item) once, with the feature matrix in ``FEATURES``
        order: each generator's score and rank (NaN / beyond the list when it did not propose the
        item) and the member x item statistics. Plain arrays: this runs per request."""
        n_items, parts = len(self.items_), []
        for g, gen in enumerate(self.generators_.values()):
            rec = gen.recommend(members, k=self.n_candidates, exclude_owned=exclude_owned)
            for pos, (ids, scores) in enumerate(zip(rec["item_ids"], rec["scores"], strict=True)):
                if not ids:
                    continue
                items = np.fromiter((self.item_index_[i] for i in ids), dtype=np.int64, count=len(ids))
                parts.append(
                    (np.full(len(ids), pos), items, np.full(len(ids), g), np.asarray(scores), np.arange(len(ids)))
                )
        if not parts:
            return np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.empty((0, len(FEATURES)))
        pos, item, gen, score, rank = (np.concatenate(x) for x in zip(*parts, strict=True))
        keys, inverse = np.unique(pos * n_items + item, return_inverse=True)
        X = np.full((len(keys), len(FEATURES)), np.nan)
        for g, name in enumerate(self.generators_):
            mine = gen == g
            X[:, FEATURES.index(f"{name}_rank")] = float(self.n_candidates)  # not proposed: beyond the list
            X[inverse[mine], FEATURES.index(f"{name}_rank")] = rank[mine]
            if f"{name}_score" in FEATURES:
                X[inverse[mine], FEATURES.index(f"{name}_score")] = score[mine]
        cand_pos, cand_item = keys // n_items, keys % n_items
        rows = np.fromiter((self.member_index_[members[p]] for p in cand_pos), dtype=np.int64, count=len(keys))
        last = np.asarray(self.last_bought_[rows, cand_item]).ravel()
        X[:, FEATURES.index("times_bought")] = np.asarray(self.times_bought_[rows, cand_item]).ravel()
        X[:, FEATURES.index("days_since_bought")] = np.where(last > 0, last - 1.0, NEVER)
        X[:, FEATURES.index("category_affinity")] = np.asarray(self.cat_share_[rows, self.item_cat_[cand_item]]).ravel()
        X[:, FEATURES.index("item_buyers_90d")] = self.item_buyers_[cand_item]
        X[:, FEATURES.index("item_trend")] = self.item_trend_[cand_item]
        X[:, FEATURES.index("member_items")] = self.member_items_[rows]
        X[:, FEATURES.index("member_days_idle")] = self.member_idle_[rows]
        return cand_pos, cand_item, X

    @property
    def owned_(self):
        """member x item matrix of what each known member bought (1 = bought)."""
        return self.generators_["buy_again"].owned_

    # -- stage two ---------------------------------------------------------------------------
    def fit_ranker(self, labels: dict, max_members: int = 20_000) -> TwoStageRecommender:
        """``labels``: member -> items bought in the window after the generators' ``as_of``.
        Members unknown to the generators carry no features and are left out."""
        members = [m for m in labels if m in self.member_index_]
        if len(members) > max_members:
            members = sorted(np.random.default_rng(self.seed).choice(members, max_members, replace=False).tolist())
        pos, item, X = self._candidates(members, exclude_owned=False)
        bought = {(m, self.item_index_[i]) for m in members for i in labels[m] if i in self.item_index_}
        y = np.fromiter(((members[p], i) in bought for p, i in zip(pos, item, strict=True)), dtype=bool, count=len(pos))
        # lambdarank learns only from lists with a bought item among the candidates (pos is sorted)
        hit = np.bincount(pos, weights=y, minlength=len(members)) > 0
        keep = hit[pos]
        if not keep.any():
            raise ValueError("no member bought any candidate item in the label window: nothing to rank")
        groups = np.bincount(pos[keep], minlength=len(members))
        self.ranker_ = lgb.LGBMRanker(**(RANKER | {"random_state": self.seed} | self.ranker_params))
        self.ranker_.fit(X[keep], y[keep].astype(int), group=groups[groups > 0], feature_name=FEATURES)
        self.training_lists_ = int((groups > 0).sum())
        return self

    def refit(self, lines: pd.DataFrame, as_of, item_category, items=None, segments=None) -> TwoStageRecommender:
        """A copy with the same ranker and generators refitted on ``lines`` before ``as_of``."""
        clone = TwoStageRecommender(
            self.als_params, self.item_item_params, self.n_candidates, self.ranker_params, self.seed
        )
        clone.ranker_, clone.training_lists_ = self.ranker_, self.training_lists_
        return clone.fit_generators(lines, as_of, item_category, items, segments)

    def recommend(
        self,
        member_ids,
        k: int = 10,
        exclude_owned: bool = True,
        segments: dict | None = None,
        histories: dict | None = None,
        allowed_items: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Same API as :meth:`models.cf.CFRecommender.recommend`. Members the generators do not
        know are answered by ALS fold-in (or segment popularity) without re-ranking."""
        member_ids = list(member_ids)
        known = [m for m in member_ids if m in self.member_index_]
        unknown = [m for m in member_ids if m not in self.member_index_]
        answers = {}
        if unknown:
            rec = self.generators_["als"].recommend(unknown, k, exclude_owned, segments, histories, allowed_items)
            answers |= {row.member_id: (row.item_ids, row.scores, row.source) for row in rec.itertuples()}
        if known:
            pos, item, X = self._candidates(known, exclude_owned)
            if allowed_items is not None:
                keep = np.asarray(allowed_items, dtype=bool)[item]
                pos, item, X = pos[keep], item[keep], X[keep]
            # one thread: a request scores a few hundred rows, thread start-up would dominate; the
            # booster itself, as the wrapper's feature-name check warns on a plain matrix
            score = self.ranker_.booster_.predict(X, num_threads=1) if len(X) else np.array([])
            order = np.lexsort((item, -score, pos))  # per member, best first; ties by item
            pos, item, score = pos[order], item[order], score[order]
            starts = np.searchsorted(pos, np.arange(len(known) + 1))
            for p, m in enumerate(known):
                top = slice(starts[p], min(starts[p] + k, starts[p + 1]))
                answers[m] = (self.items_[item[top]].tolist(), np.round(score[top], 6).tolist(), "two_stage")
        return pd.DataFrame(
            {
                "member_id": member_ids,
                "item_ids": [list(answers[m][0]) for m in member_ids],
                "scores": [list(answers[m][1]) for m in member_ids],
                "source": [answers[m][2] for m in member_ids],
            }
        )
