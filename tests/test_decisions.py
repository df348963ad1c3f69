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


def _pairs_world(seed: int = 5, n: int = 600, revenue: bool = False):
    """Random members x offers with categorical, missing and unseen values, and a fitted uplift model
    (``revenue``: the responses carry revenue, so the model learns what a response is worth)."""
    from models.uplift import UpliftModel, pair_features

    rng = np.random.default_rng(seed)
    cats = ["food", "home", "beauty", "toys"]
    members = pd.DataFrame(
        {
            "member_id": [f"M{i}" for i in range(n)],
            "tier": rng.choice(["Regular", "Gold"], n),
            "lifecycle_stage": rng.choice(["new", "growth", "mature", None], n),
            "top_category_1": rng.choice(cats, n),
            "top_category_1_share": rng.random(n),
            "top_category_2": rng.choice([*cats, None], n),
            "top_category_2_share": np.where(rng.random(n) < 0.2, np.nan, rng.random(n)),
            "aov_365d": np.where(rng.random(n) < 0.1, 0.0, rng.gamma(2.0, 10.0, n)),
            "frequency_90d": rng.poisson(3, n).astype(float),
        }
    )
    offers = _offers().assign(margin_impact=[-0.05, 0.0, -0.1, 0.0, -0.02])
    pairs = pair_features(
        members.sample(n, random_state=seed, replace=True), offers.sample(n, replace=True, random_state=1)
    )
    treatment = rng.random(len(pairs)) < 0.7
    y = rng.random(len(pairs)) < 0.1 + 0.1 * treatment * (pairs["offer_category_share"].to_numpy() > 0.3)
    value = np.where(y, 15.0 + 10.0 * (pairs["offer_id"].to_numpy() == "B"), 0.0) if revenue else None
    model = UpliftModel(params={"n_estimators": 20, "min_child_samples": 5}).fit(
        pairs, treatment, y, y & treatment, revenue=value
    )
    return members, offers, model


@pytest.mark.parametrize("revenue", [False, True])
def test_the_hot_path_scores_every_offer_exactly_as_the_frame_path(revenue):
    from models.uplift import PairEncoder

    members, offers, model = _pairs_world(revenue=revenue)
    encoder = PairEncoder(model.features_, offers)
    for i in (0, 3, 17, 42):
        member = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in members.iloc[i].items()}
        frame = decisions.score_offers(model, pd.DataFrame([members.iloc[i]]), offers, 0.3)
        arrays = decisions.score_member(model, encoder, member, 0.3)
        assert list(arrays["offer_id"]) == frame["offer_id"].tolist()
        for col in ("p_redeem", "uplift", "order_value", "expected_cost", "expected_incremental_value"):
            np.testing.assert_allclose(arrays[col], frame[col].to_numpy(), rtol=1e-12, err_msg=col)
        np.testing.assert_allclose(arrays["offer_category_share"], frame["offer_category_share"].to_numpy())
    # an unseen level and a missing value encode as NaN, as pandas' categorical does for LightGBM
    odd = {**member, "lifecycle_stage": "never-seen", "top_category_1": None}
    frame = decisions.score_offers(model, pd.DataFrame([odd]), offers, 0.3)
    np.testing.assert_allclose(
        decisions.score_member(model, encoder, odd, 0.3)["expected_incremental_value"],
        frame["expected_incremental_value"].to_numpy(),
        rtol=1e-12,
    )


def test_an_offer_is_worth_uplift_times_what_a_response_is_worth_not_the_average_basket():
    """With revenue in the responses, value = uplift x learned response value x margin - expected
    cost; without, the member's 365-day average order stands in."""
    from models.uplift import PairEncoder

    members, offers, learned = _pairs_world(revenue=True)
    _, _, unlearned = _pairs_world()
    margin = 0.3 + offers["margin_impact"].to_numpy()
    member = members.iloc[3].to_dict()
    for model, expected_value in ((learned, None), (unlearned, member["aov_365d"] or decisions.DEFAULT_AOV)):
        scored = decisions.score_member(model, PairEncoder(model.features_, offers), member, 0.3)
        if expected_value is None:  # responses to B were worth 25, to the others 15
            expected_value = scored["order_value"]
            assert expected_value[1] > expected_value[0] + 5 and 12 < expected_value[0] < 18
        np.testing.assert_allclose(scored["order_value"], expected_value)
        np.testing.assert_allclose(
            scored["expected_incremental_value"],
            scored["uplift"] * expected_value * margin - scored["expected_cost"],
            rtol=1e-12,
        )


def test_the_numpy_matrix_predicts_what_the_categorical_frame_predicts():
    from models.uplift import pair_features

    members, offers, model = _pairs_world(seed=9)
    X = pair_features(members.head(50), offers)
    booster = model.treated_model_.booster_
    np.testing.assert_array_equal(
        booster.predict(model.features_.transform(X)), booster.predict(model.features_.to_numpy(X))
    )


def test_choose_order_draws_like_choose():
    ranked = pd.DataFrame({"offer_id": list("ABCDE")})
    for seed in range(20):
        a = decisions.choose(ranked, 3, 0.5, np.random.default_rng(seed))
        order, propensity, explored = decisions.choose_order(5, 3, 0.5, np.random.default_rng(seed))
        assert a[0]["offer_id"].tolist() == [ranked["offer_id"][i] for i in order]
        assert (a[1], a[2]) == (propensity, explored)


def test_batch_and_row_category_encodings_agree():
    """Long columns take the vectorised path; it must give the per-value path's codes, with
    missing and unseen levels as NaN."""
    from models.features import FeatureMatrix

    fitted = pd.DataFrame({"region": ["north", "south", "east"], "spend": [1.0, 2.0, 3.0]})
    fm = FeatureMatrix().fit(fitted)
    values = ["south", None, "west", np.nan, "north", "east"] * 20
    X = pd.DataFrame({"region": values, "spend": np.arange(120.0)})
    batch = fm.to_numpy(X)
    rows = np.vstack([fm.to_numpy(X.iloc[i : i + 6]) for i in range(0, 120, 6)])
    np.testing.assert_array_equal(batch, rows)
    assert batch[:6, 0].tolist()[::4] == [2.0, 1.0] and np.isnan(batch[1:4, 0]).all()


def test_batch_scoring_on_arrays_equals_the_frame_path():
    """score_pairs (batch: one matrix for every member x offer) gives score_offers' rows and values,
    unseen levels and missing categories included."""
    from models.uplift import PairEncoder, pair_features

    members, offers, model = _pairs_world(seed=11)
    members.loc[members.index[:7], "lifecycle_stage"] = "never-seen"
    members.loc[members.index[7:12], ["top_category_1", "top_category_1_share"]] = [None, np.nan]
    encoder = PairEncoder(model.features_, offers)
    np.testing.assert_array_equal(
        encoder.encode_many(members), model.features_.to_numpy(pair_features(members, offers))
    )
    frame = decisions.score_offers(model, members, offers, 0.3)
    arrays = decisions.score_pairs(model, encoder, members, 0.3)
    assert arrays["member_id"].tolist() == frame["member_id"].tolist()
    assert arrays["offer_id"].tolist() == frame["offer_id"].tolist()
    for col in ("p_redeem", "uplift", "order_value", "expected_cost", "expected_incremental_value"):
        np.testing.assert_allclose(arrays[col], frame[col].to_numpy(), rtol=1e-12, err_msg=col)
    assert (arrays["basis"] == frame["basis"]).all()


def test_churn_bands_and_the_warning_ladder():
    from models.churn import risk_band, suggested_action

    p = np.array([0.0, 0.2499, 0.25, 0.5, 0.7499, 0.75, 1.0, np.nan])
    assert risk_band(p).tolist() == ["low", "low", "medium", "high", "high", "critical", "critical", "low"]
    band = np.array(["low", "medium", "high", "critical", "low", "unknown"])
    actions = suggested_action(band, np.array([5, 5, 5, 5, 90, np.nan]))
    assert [a.split(":")[0] for a in actions] == [
        "none",
        "care_task",
        "churn_warning_level_1",
        "churn_warning_level_2",
        "churn_warning_level_3",  # three months without a purchase: downgrade review, whatever the band
        "none",
    ]
