"""Item recommendations from implicit feedback (``implicit`` ALS / BPR / item-item) and baselines.

Member x item confidence = alpha * log1p(recency-decayed quantity). Members unknown to the
fitted model are folded in from the items they bring (ALS ``recalculate_user``, item-item
scoring of their basket); members with nothing to fold in get their segment's popularity.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.bpr import BayesianPersonalizedRanking
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
from threadpoolctl import ThreadpoolController


@functools.cache
def _blas_controller() -> ThreadpoolController:
    # discovering the loaded BLAS libraries reads /proc/self/maps (milliseconds): once per process
    return ThreadpoolController()


def _one_blas_thread():
    """implicit runs its own threads; BLAS threads underneath only slow it."""
    return _blas_controller().limit(limits=1, user_api="blas")


ALGORITHMS = ("als", "bpr", "item_item")


class PurchasePairs:
    """A purchase history's (member, item) pairs, found once: the interaction weights at any
    half-life are then one weighted count per pair (``np.bincount``), where a groupby would hash
    every line's string keys again for each (at a million members: 57M lines, 6 GB and 30 s a
    call). Lines without a member or an item are left out, as a groupby leaves them out."""

    def __init__(self, lines: pd.DataFrame):
        members, items = lines["member_id"], lines["item_id"]
        m_codes, m_names = pd.factorize(members, sort=True)
        i_codes, i_names = pd.factorize(items, sort=True)
        valid = (m_codes >= 0) & (i_codes >= 0)
        self.lines_ = None if valid.all() else np.nonzero(valid)[0]  # the lines kept, when not all
        key = m_codes.astype(np.int64)
        key *= len(i_names)
        key += i_codes
        del m_codes, i_codes
        if self.lines_ is not None:
            key = key[self.lines_]
        pairs, self.inverse_ = np.unique(key, return_inverse=True)  # in (member, item) order, as a groupby
        del key
        self.member_id = pd.Categorical.from_codes(pairs // len(i_names), categories=m_names)
        self.item_id = pd.Categorical.from_codes(pairs % len(i_names), categories=i_names)
        self.ts_ = self._kept(lines["ts"].to_numpy())
        self.quantity_ = self._kept(lines["quantity"].to_numpy(dtype=float))

    def _kept(self, values: np.ndarray) -> np.ndarray:
        return values if self.lines_ is None else values[self.lines_]

    def __len__(self) -> int:
        return len(self.member_id)

    def age_days(self, as_of: pd.Timestamp) -> np.ndarray:
        """Each line's age at ``as_of`` in days."""
        delta = np.datetime64(pd.Timestamp(as_of).tz_localize(None), "ns") - self.ts_.astype("datetime64[ns]")
        return delta.astype(np.int64) / 1e9 / 86400.0  # as Timedelta.total_seconds() / 86400

    def weights(self, as_of: pd.Timestamp, half_life_days: float) -> pd.DataFrame:
        """member_id, item_id, weight: quantity per pair, each line decayed by its age at ``as_of``."""
        w = self.quantity_ * np.power(0.5, np.clip(self.age_days(as_of), 0, None) / half_life_days)
        summed = np.bincount(self.inverse_, weights=w, minlength=len(self))
        return pd.DataFrame({"member_id": self.member_id, "item_id": self.item_id, "weight": summed})


def interaction_weights(lines: pd.DataFrame, as_of: pd.Timestamp, half_life_days: float) -> pd.DataFrame:
    """Sum of quantity per member x item, each line decayed by its age at ``as_of``."""
    return PurchasePairs(lines).weights(as_of, half_life_days)


class _Indexed:
    """Shared member/item indexing, owned-item matrix and segment popularity."""

    def _index(self, interactions: pd.DataFrame, items: list[str] | None, segments: pd.Series | None) -> sp.csr_matrix:
        self.items_ = np.array(sorted(set(items or []) | set(interactions["item_id"].unique())), dtype=object)
        self.item_index_ = {it: i for i, it in enumerate(self.items_)}
        members = np.array(sorted(interactions["member_id"].unique()), dtype=object)
        self.member_index_ = {m: i for i, m in enumerate(members)}
        rows = interactions["member_id"].map(self.member_index_).to_numpy()
        cols = interactions["item_id"].map(self.item_index_).to_numpy()
        weights = sp.csr_matrix(
            (interactions["weight"].to_numpy(dtype=np.float32), (rows, cols)), shape=(len(members), len(self.items_))
        )
        self.owned_ = weights.copy()
        self.owned_.data[:] = 1.0
        buyers = np.asarray(self.owned_.sum(axis=0)).ravel()
        self.popular_ = np.argsort(-buyers, kind="stable")
        self.segment_popular_ = {}
        if segments is not None:
            seg = segments.reindex(members).fillna("unknown").to_numpy()
            for s in np.unique(seg):
                counts = np.asarray(self.owned_[seg == s].sum(axis=0)).ravel()
                self.segment_popular_[str(s)] = np.argsort(-(counts + 1e-6 * buyers), kind="stable")
        return weights

    def _popular_for(self, segment: str | None) -> np.ndarray:
        return self.segment_popular_.get(str(segment), self.popular_) if segment is not None else self.popular_

    def _fallback(self, owned: set[int], k: int, exclude_owned: bool, segment: str | None, allowed: np.ndarray | None):
        ranked = [i for i in self._popular_for(segment) if not (exclude_owned and i in owned)]
        if allowed is not None:
            ranked = [i for i in ranked if allowed[i]]
        return np.array(ranked[:k], dtype=np.int64), np.zeros(min(k, len(ranked)))

    def _frame(self, member_ids, idx_lists, score_lists, sources) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "member_id": list(member_ids),
                "item_ids": [self.items_[np.asarray(ix, dtype=np.int64)].tolist() for ix in idx_lists],
                "scores": [np.round(np.asarray(s, dtype=float), 6).tolist() for s in score_lists],
                "source": list(sources),
            }
        )


def _clean(ids: np.ndarray, scores: np.ndarray, banned: set) -> tuple[np.ndarray, np.ndarray]:
    """``implicit`` pads a list it cannot fill (a catalogue smaller than ``N`` after owned and
    filtered items) with repeats of item 0 or -1: keep each real, allowed item once."""
    ids, scores = np.asarray(ids), np.asarray(scores)
    seen: set = set()
    keep = np.zeros(len(ids), dtype=bool)
    for j, (i, s) in enumerate(zip(ids.tolist(), scores.tolist(), strict=True)):
        if i >= 0 and np.isfinite(s) and i not in banned and i not in seen:
            keep[j] = True
            seen.add(i)
    return ids[keep], scores[keep]


class PopularityRecommender(_Indexed):
    """Most-bought items (by number of members), overall or within the member's segment."""

    algorithm = "popularity"

    def fit(self, interactions: pd.DataFrame, items: list[str] | None = None, segments: pd.Series | None = None):
        self._index(interactions, items, segments)
        self.segments_ = segments
        return self

    def recommend(
        self,
        member_ids,
        k: int = 10,
        exclude_owned: bool = True,
        segments: dict | None = None,
        histories: dict | None = None,
        allowed_items: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Same API as :meth:`CFRecommender.recommend`; ``histories`` only mark owned items."""
        idx, scores, src = [], [], []
        for m in member_ids:
            row = self.member_index_.get(m)
            owned = set(self.owned_[row].indices) if row is not None else set()
            owned |= {self.item_index_[i] for i in (histories or {}).get(m, []) if i in self.item_index_}
            seg = (segments or {}).get(m)
            i, s = self._fallback(owned, k, exclude_owned, seg, allowed_items)
            idx.append(i)
            scores.append(s)
            src.append("segment_popularity" if seg is not None and str(seg) in self.segment_popular_ else "popularity")
        return self._frame(member_ids, idx, scores, src)


class CFRecommender(_Indexed):
    """``implicit`` model behind a member-id API with fold-in and popularity fallback."""

    def __init__(
        self,
        algorithm: str = "als",
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 15,
        alpha: float = 10.0,
        learning_rate: float = 0.05,
        neighbours: int = 50,
        similarity: str = "bm25",
        seed: int = 7,
        num_threads: int = 2,
    ):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {algorithm!r}")
        self.algorithm = algorithm
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.neighbours = neighbours
        self.similarity = similarity
        self.seed = seed
        self.num_threads = num_threads

    def _model(self):
        if self.algorithm == "als":
            return AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=self.num_threads,
            )
        if self.algorithm == "bpr":
            return BayesianPersonalizedRanking(
                factors=self.factors,
                learning_rate=self.learning_rate,
                regularization=self.regularization,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=self.num_threads,
            )
        cls = BM25Recommender if self.similarity == "bm25" else CosineRecommender
        return cls(K=self.neighbours, num_threads=self.num_threads)

    def confidence(self, weights: sp.csr_matrix) -> sp.csr_matrix:
        conf = weights.copy()
        conf.data = (self.alpha * np.log1p(conf.data)).astype(np.float32)
        return conf

    def fit(self, interactions: pd.DataFrame, items: list[str] | None = None, segments: pd.Series | None = None):
        """``interactions``: member_id, item_id, weight (see :func:`interaction_weights`)."""
        self.conf_ = self.confidence(self._index(interactions, items, segments))
        with _one_blas_thread(), warnings.catch_warnings():  # implicit threads; BLAS threads only slow it
            # implicit's own bm25_weight hands its kNN a COO matrix and then warns about it
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            self.model_ = self._model()
            self.model_.fit(self.conf_, show_progress=False)
        return self

    def recommend(
        self,
        member_ids,
        k: int = 10,
        exclude_owned: bool = True,
        segments: dict | None = None,
        histories: dict | None = None,
        allowed_items: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Top-``k`` items per member.

        ``histories`` maps members unknown to the model to the item ids they bought (fold-in);
        ``segments`` maps members to the segment whose popularity is the fallback;
        ``allowed_items`` is a boolean mask over ``items_`` (business filters).
        """
        member_ids = list(member_ids)
        rows = np.array([self.member_index_.get(m, -1) for m in member_ids])
        idx: list = [None] * len(member_ids)
        scores: list = [None] * len(member_ids)
        src = ["cf"] * len(member_ids)
        flt = None if allowed_items is None else np.nonzero(~np.asarray(allowed_items, dtype=bool))[0]
        known = np.nonzero(rows >= 0)[0]
        if len(known):
            with _one_blas_thread():
                ids, sc = self.model_.recommend(
                    rows[known],
                    self.conf_[rows[known]],
                    N=k,
                    filter_already_liked_items=exclude_owned,
                    filter_items=flt,
                )
            banned = set() if flt is None else set(flt.tolist())
            for j, i in enumerate(known):
                owned = set(self.conf_[rows[i]].indices.tolist()) if exclude_owned else set()
                idx[i], scores[i] = _clean(ids[j], sc[j], banned | owned)
        for i in np.nonzero(rows < 0)[0]:
            m = member_ids[i]
            hist = [self.item_index_[it] for it in (histories or {}).get(m, []) if it in self.item_index_]
            if hist and self.algorithm != "bpr":  # BPR cannot fold in a user; fall back below
                user = sp.csr_matrix(
                    (np.full(len(hist), self.alpha * np.log1p(1.0), dtype=np.float32), ([0] * len(hist), hist)),
                    shape=(1, len(self.items_)),
                )
                user.sum_duplicates()
                extra = {"recalculate_user": True} if self.algorithm == "als" else {}
                with _one_blas_thread():
                    ids, sc = self.model_.recommend(
                        0, user, N=k, filter_already_liked_items=exclude_owned, filter_items=flt, **extra
                    )
                banned = (set() if flt is None else set(flt.tolist())) | (set(hist) if exclude_owned else set())
                (idx[i], scores[i]), src[i] = _clean(ids, sc, banned), "cf_fold_in"
            else:
                idx[i], scores[i] = self._fallback(set(hist), k, exclude_owned, (segments or {}).get(m), allowed_items)
                src[i] = "segment_popularity"
        return self._frame(member_ids, idx, scores, src)


class BuyAgainRecommender(_Indexed):
    """The member's own items by recency-decayed quantity (what replenishment baskets repeat), then
    the segment's most popular items. With ``exclude_owned`` there is nothing to buy again and it
    answers popularity; candidates of the two-stage ranker and a baseline that CF must beat."""

    algorithm = "buy_again"

    def fit(self, interactions: pd.DataFrame, items: list[str] | None = None, segments: pd.Series | None = None):
        """``interactions``: member_id, item_id, weight (see :func:`interaction_weights`)."""
        self.weights_ = self._index(interactions, items, segments)
        return self

    def recommend(
        self,
        member_ids,
        k: int = 10,
        exclude_owned: bool = True,
        segments: dict | None = None,
        histories: dict | None = None,
        allowed_items: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Same API as :meth:`CFRecommender.recommend`; ``histories`` are bought-once items of
        members unknown to the model."""
        idx, scores, src = [], [], []
        allowed = None if allowed_items is None else np.asarray(allowed_items, dtype=bool)
        for m in member_ids:
            row = self.member_index_.get(m)
            if row is not None:
                own, weight = self.weights_[row].indices, self.weights_[row].data.astype(float)
            else:
                brought = [self.item_index_[i] for i in (histories or {}).get(m, []) if i in self.item_index_]
                own = np.unique(np.array(brought, dtype=np.int64))
                weight = np.ones(len(own))
            ranked, ranked_scores = np.array([], dtype=np.int64), np.array([])
            if not exclude_owned and len(own):
                order = np.lexsort((own, -weight))  # heaviest first; ties by item index, deterministic
                ranked, ranked_scores = own[order], weight[order]
                if allowed is not None:
                    keep = allowed[ranked]
                    ranked, ranked_scores = ranked[keep], ranked_scores[keep]
                ranked, ranked_scores = ranked[:k], ranked_scores[:k]
            segment = (segments or {}).get(m)
            fill, fill_scores = self._fallback(set(own.tolist()), k - len(ranked), True, segment, allowed)
            idx.append(np.concatenate([ranked, fill]).astype(np.int64))
            scores.append(np.concatenate([ranked_scores, fill_scores]))
            src.append("buy_again" if len(ranked) else "popularity")
        return self._frame(member_ids, idx, scores, src)
