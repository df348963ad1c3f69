"""Decision logic as plain functions, on small hand-made frames: no world, no store, no model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving import decisions

pytestmark = pytest.mark.unit

NOW = pd.Timestamp("2024-06-01")


def _offers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "offer_id": ["A", "B", "C", "D", "E"],
            "kind": ["coupon", "gift", "discount", "service", "coupon"],
            "scene_dimension": ["time", "space", "need", "social", "time"],
            "value_dimension": ["material", "emotional", "social", "development", "material"],
            "category_l1": ["food", "home", "food", "beauty", "toys"],
            "cost": [1.0, 5.0, 2.0, 8.0, 1.0],
            "eligible_tiers": ["Regular|Silver|Gold|Platinum", "Gold|Platinum", "Regular|Silver", "Platinum"]
            + ["Regular"],
            "stock": [10, 10, 0, 10, 10],
            "valid_from": [NOW - pd.Timedelta(days=10)] * 4 + [NOW + pd.Timedelta(days=1)],
            "valid_to": [NOW + pd.Timedelta(days=10)] * 5,
        }
    )


def test_eligibility_names_the_first_rule_that_removes_each_offer():
    offers = _offers()
    stock = offers.set_index("offer_id")["stock"].astype(float)
    elig = decisions.eligibility(offers, "Silver", NOW, stock, redeemed={"A"})
    removed = dict(zip(elig["offer_id"], elig["removed_by"], strict=True))
    assert removed == {"A": "already_redeemed", "B": "tier", "C": "stock", "D": "tier", "E": "tier"}
    assert not elig["eligible"].any()
    gold = decisions.eligibility(offers, "Gold", NOW, stock, redeemed=set())
    assert set(gold.loc[gold["eligible"], "offer_id"]) == {"A", "B"}
    # an unknown member is treated as Regular: only offers open to everyone
    anon = decisions.eligibility(offers, None, NOW, stock, redeemed=set())
    assert anon.set_index("offer_id").loc["E", "removed_by"] == "validity"
    assert set(anon.loc[anon["eligible"], "offer_id"]) == {"A"}


def test_trace_lists_every_removed_offer_once_under_its_rule():
    offers = _offers()
    elig = decisions.eligibility(offers, "Silver", NOW, offers.set_index("offer_id")["stock"], {"A"})
    trace = decisions.trace(elig)
    assert trace == [
        {"rule": "already_redeemed", "removed": ["A"]},
        {"rule": "stock", "removed": ["C"]},
        {"rule": "tier", "removed": ["B", "D", "E"]},
    ]


def test_choice_without_exploration_is_the_ranking_and_logs_propensity_one():
    ranked = pd.DataFrame({"offer_id": ["A", "B", "C"]})
    chosen, propensity, explored = decisions.choose(ranked, 2, 0.0, np.random.default_rng(0))
    assert chosen["offer_id"].tolist() == ["A", "B"] and propensity == 1.0 and not explored
    none, propensity, explored = decisions.choose(ranked.head(0), 2, 0.5, np.random.default_rng(0))
    assert none.empty and propensity is None and not explored


def test_exploration_is_reproducible_with_a_seeded_generator_and_propensities_are_honest():
    ranked = pd.DataFrame({"offer_id": list("ABCD")})

    def log(seed):
        rng = np.random.default_rng(seed)
        return [decisions.choose(ranked, 1, 0.4, rng) for _ in range(400)]

    a, b = log(7), log(7)
    assert [(c["offer_id"].iloc[0], p, e) for c, p, e in a] == [(c["offer_id"].iloc[0], p, e) for c, p, e in b]
    assert [c["offer_id"].iloc[0] for c, _, _ in a] != [c["offer_id"].iloc[0] for c, _, _ in log(8)]
    firsts = pd.Series([c["offer_id"].iloc[0] for c, _, _ in a])
    # the greedy offer leads with 1 - 0.4 + 0.4/4 = 0.7, each other with 0.1; the log says the same
    assert firsts.eq("A").mean() == pytest.approx(0.7, abs=0.07)
    logged = {c["offer_id"].iloc[0]: p for c, p, _ in a}
    assert logged["A"] == pytest.approx(0.7) and logged["B"] == pytest.approx(0.1)


def test_reason_codes_follow_the_scores_and_the_member():
    row = pd.Series({"basis": "uplift", "uplift": 0.05, "offer_category_share": 0.3})
    member = {"points_expiring_30d": 120, "lifecycle_stage": "decline"}
    assert decisions.reason_codes(row, member) == [
        "positive_uplift",
        "category_affinity",
        "points_expiring_soon",
        "win_back",
    ]
    row = pd.Series({"basis": "propensity", "uplift": np.nan, "offer_category_share": 0.0})
    assert decisions.reason_codes(row, {}) == ["propensity_ranking_no_uplift_model"]


def test_no_benefit_is_shown_at_a_negative_score_without_a_reason():
    offers = _offers()
    elig = decisions.eligibility(offers, "Gold", NOW, offers.set_index("offer_id")["stock"], set())
    member = {"tier": "Gold", "top_category_1": "home", "top_category_1_share": 0.6}
    ranked = decisions.rank_benefits(offers, member, {"home": 0.5}, elig)
    shown, left_out = decisions.benefit_shortlist(ranked, 10)
    assert ((shown["score"] > 0) | shown["reasons"].map(bool)).all()
    assert set(shown["offer_id"]) | set(left_out) == set(ranked.loc[ranked["eligible"], "offer_id"])
    costly = ranked.assign(score=-1.0, reasons=[[]] * len(ranked))
    assert decisions.benefit_shortlist(costly, 10)[0].empty


def test_benefits_rank_by_affinity_and_fit_and_say_why():
    offers = _offers()
    elig = decisions.eligibility(offers, "Gold", NOW, offers.set_index("offer_id")["stock"], set())
    member = {"tier": "Gold", "top_category_1": "home", "top_category_1_share": 0.6}
    ranked = decisions.rank_benefits(offers, member, {"home": 0.5}, elig)
    top = ranked[ranked["eligible"]].iloc[0]
    assert top["offer_id"] == "B"  # home (CF and own spend) and an emotional benefit for a Gold member
    assert {"recommended_category", "shops_this_category", "prefers_emotional_benefits"} <= set(top["reasons"])
