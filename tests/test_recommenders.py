"""The recommenders on a hand-made shop: repeat buyers of staples plus browsing within a favourite
category. Buy-again and the two-stage re-ranker against ALS alone; the shared recommend API."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.cf import BuyAgainRecommender, CFRecommender, interaction_weights
from models.cf_rank import TwoStageRecommender
from training.evaluation.metrics import ranking_metrics

pytestmark = pytest.mark.unit

START = pd.Timestamp("2024-01-01")
CATEGORIES = 6
ITEMS_PER_CATEGORY = 15


def _shop(members=400, days=360, seed=0) -> tuple[pd.DataFrame, pd.Series]:
    """Each member buys 3 staples again and again at their own rates and now and then an item of
    their favourite category (whose popularity is skewed)."""
    rng = np.random.default_rng(seed)
    items = [f"c{c}-i{i}" for c in range(CATEGORIES) for i in range(ITEMS_PER_CATEGORY)]
    category = pd.Series([it.split("-")[0] for it in items], index=items)
    skew = 1.0 / np.arange(1, ITEMS_PER_CATEGORY + 1)
    rows = []
    for m in range(members):
        fav = rng.integers(CATEGORIES)
        staples = rng.choice(items, 3, replace=False)
        rates = rng.uniform(0.01, 0.06, 3)
        for day in range(days):
            ts = START + pd.Timedelta(days=day, hours=int(rng.integers(8, 20)))
            rows += [(f"m{m}", s, 1, ts) for s, r in zip(staples, rates, strict=True) if rng.random() < r]
            if rng.random() < 0.04:
                rows.append((f"m{m}", f"c{fav}-i{rng.choice(ITEMS_PER_CATEGORY, p=skew / skew.sum())}", 1, ts))
    return pd.DataFrame(rows, columns=["member_id", "item_id", "quantity", "ts"]), category


def _ndcg(model, lines, start, end) -> float:
    future = lines[(lines["ts"] >= start) & (lines["ts"] < end)].groupby("member_id")["item_id"].agg(set)
    members = [m for m in future.index if m in model.member_index_]
    recs = model.recommend(members, k=10, exclude_owned=False)["item_ids"].tolist()
    return ranking_metrics(recs, [future[m] for m in members], ks=(10,))["ndcg_at_10"]


@pytest.fixture(scope="module")
def shop():
    return _shop()


def _labels(lines, start, end) -> dict:
    window = lines[(lines["ts"] >= start) & (lines["ts"] < end)]
    return window.groupby("member_id")["item_id"].agg(set).to_dict()


def test_two_stage_learns_on_one_window_and_beats_each_generator_on_the_next(shop):
    lines, category = shop
    t1, t2, t3 = (START + pd.Timedelta(days=d) for d in (240, 300, 360))
    items = sorted(category.index)
    params = {"factors": 16, "iterations": 10, "alpha": 1.0, "regularization": 0.05}
    model = TwoStageRecommender(params, {"neighbours": 20}, seed=1)
    model.fit_generators(lines, t1, category, items).fit_ranker(_labels(lines, t1, t2))
    ranked = model.refit(lines, t2, category, items)
    als = CFRecommender("als", seed=1, **params).fit(interaction_weights(lines[lines["ts"] < t2], t2, 90), items)
    again = BuyAgainRecommender().fit(interaction_weights(lines[lines["ts"] < t2], t2, 90), items)
    scores = {
        name: _ndcg(m, lines, t2, t3) for name, m in {"two_stage": ranked, "als": als, "buy_again": again}.items()
    }
    assert scores["two_stage"] > scores["als"] + 0.02, scores
    assert scores["two_stage"] > scores["buy_again"], scores  # more than a copy of its best generator
    # the ranker learnt that the member's own recent staples matter
    importance = dict(zip(ranked.ranker_.feature_name_, ranked.ranker_.feature_importances_, strict=True))
    assert importance["days_since_bought"] + importance["times_bought"] + importance["buy_again_rank"] > 0


def test_the_recommend_api_is_shared(shop):
    lines, category = shop
    t1, t2 = START + pd.Timedelta(days=240), START + pd.Timedelta(days=300)
    items = sorted(category.index)
    model = TwoStageRecommender({"factors": 8, "iterations": 5}, {"neighbours": 10}, seed=1)
    model.fit_generators(lines, t1, category, items).fit_ranker(_labels(lines, t1, t2))
    owned = set(lines[(lines["member_id"] == "m0") & (lines["ts"] < t1)]["item_id"])
    allowed = np.array([not it.startswith("c0-") for it in model.items_])
    out = model.recommend(["m0", "newcomer", "stranger"], k=7, histories={"newcomer": ["c1-i0"]}, allowed_items=allowed)
    out = out.set_index("member_id")
    for m in out.index:
        recs = out.loc[m, "item_ids"]
        assert len(recs) == len(set(recs)) <= 7 and not any(r.startswith("c0-") for r in recs)
    assert not owned & set(out.loc["m0", "item_ids"]) and out.loc["m0", "source"] == "two_stage"
    assert out.loc["newcomer", "source"] == "cf_fold_in" and "c1-i0" not in out.loc["newcomer", "item_ids"]
    assert out.loc["stranger", "source"] == "segment_popularity" and len(out.loc["stranger", "item_ids"]) == 7
    # without excluding owned items the member's staples come back first
    again = model.recommend(["m0"], k=3, exclude_owned=False).iloc[0]
    assert set(again["item_ids"]) & owned


def test_buy_again_ranks_own_items_by_weight_then_fills_with_popularity():
    lines = pd.DataFrame(
        {
            "member_id": ["a", "a", "a", "b", "b", "c"],
            "item_id": ["x", "x", "y", "y", "z", "z"],
            "quantity": [1, 1, 1, 1, 1, 1],
            "ts": pd.to_datetime(["2024-01-01"] * 6),
        }
    )
    model = BuyAgainRecommender().fit(
        interaction_weights(lines, pd.Timestamp("2024-01-02"), 90), items=["x", "y", "z", "w"]
    )
    a = model.recommend(["a"], k=3, exclude_owned=False).iloc[0]
    assert a["item_ids"] == ["x", "y", "z"] and a["source"] == "buy_again"
    assert model.recommend(["a"], k=3, exclude_owned=True).iloc[0]["item_ids"] == ["z", "w"]
    assert model.recommend(["new"], k=2, exclude_owned=False, histories={"new": ["w"]}).iloc[0]["item_ids"][0] == "w"
