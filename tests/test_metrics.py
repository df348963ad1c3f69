"""Evaluation metrics on hand-made inputs with known answers: no world needed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.evaluation.metrics import classification_metrics, qini_coefficient, ranking_metrics

pytestmark = pytest.mark.unit


def test_ranking_metrics_on_a_known_list():
    m = ranking_metrics([["a", "x", "b"]], [{"a", "b"}], ks=(3,))
    assert m["precision_at_3"] == pytest.approx(2 / 3)
    assert m["recall_at_3"] == 1.0
    ideal = 1 + 1 / np.log2(3)
    assert m["ndcg_at_3"] == pytest.approx((1 + 1 / np.log2(4)) / ideal)
    assert m["map_at_3"] == pytest.approx((1 + 2 / 3) / 2)


def test_repeated_recommendations_count_once():
    """A list that repeats a relevant item (e.g. padding) must not score above a perfect list."""
    m = ranking_metrics([["a"] * 10], [{"a"}], ks=(10,))
    assert m["recall_at_10"] == 1.0 and m["ndcg_at_10"] == 1.0 and m["map_at_10"] == 1.0
    assert m["precision_at_10"] == pytest.approx(0.1)


@given(
    recs=st.lists(st.lists(st.integers(0, 8), max_size=15), min_size=1, max_size=6),
    rel=st.lists(st.sets(st.integers(0, 8), max_size=5), min_size=1, max_size=6),
)
def test_ranking_metrics_never_exceed_one(recs, rel):
    n = min(len(recs), len(rel))
    m = ranking_metrics(recs[:n], rel[:n], ks=(1, 5, 10), n_items=9)
    assert all(0.0 <= v <= 1.0 + 1e-12 for k, v in m.items() if k != "members_evaluated")


def test_classification_metrics_separate_a_perfect_from_a_random_score():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 0, 0, 1])
    perfect = classification_metrics(y, y * 0.9 + 0.05)
    assert perfect["roc_auc"] == 1.0 and perfect["brier"] == pytest.approx(0.0025)
    flat = classification_metrics(y, np.full(len(y), 0.4))
    assert flat["roc_auc"] == 0.5 and flat["mean_prediction"] == pytest.approx(0.4)


def test_qini_rewards_ranking_the_treated_responders_first():
    treatment = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    good = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3])
    assert qini_coefficient(good, treatment, y) > qini_coefficient(-good, treatment, y)


def test_a_weighted_qini_counts_each_row_its_weight_times():
    """Integer weights give the Qini of the rows repeated; unit weights the unweighted Qini."""
    rng = np.random.default_rng(3)
    n = 400
    treatment, y = rng.random(n) < 0.5, (rng.random(n) < 0.2).astype(int)
    score, weight = rng.random(n), rng.integers(1, 5, n)
    repeated = np.repeat(np.arange(n), weight)
    rows = qini_coefficient(score[repeated], treatment[repeated], y[repeated])
    # repeated rows tie on score: order them as the weighted curve does (stable, by original row)
    assert qini_coefficient(score, treatment, y, weight) == pytest.approx(rows, abs=1e-3)
    assert qini_coefficient(score, treatment, y, np.ones(n)) == pytest.approx(qini_coefficient(score, treatment, y))
    assert qini_coefficient(score, treatment, y, weight) != pytest.approx(qini_coefficient(score, treatment, y))


@pytest.mark.parametrize("algorithm", ["als", "bpr", "item_item"])
def test_recommendation_lists_never_hold_padding_repeats_or_owned_items(algorithm):
    """A catalogue smaller than k: implicit pads the list; the recommender must not pass that on."""
    from models.cf import CFRecommender

    inter = pd.DataFrame(
        {"member_id": ["m1", "m1", "m2", "m2", "m3"], "item_id": ["a", "b", "b", "c", "a"], "weight": 1.0}
    )
    model = CFRecommender(algorithm=algorithm, factors=4, iterations=3).fit(inter, items=["a", "b", "c", "d"])
    recs = model.recommend(["m1", "m2", "m3", "new"], k=10, histories={"new": ["a"]})
    owned = {"m1": {"a", "b"}, "m2": {"b", "c"}, "m3": {"a"}, "new": {"a"}}
    for member, items in zip(recs["member_id"], recs["item_ids"], strict=True):
        assert len(items) == len(set(items)) <= 4 - len(owned[member]), (member, items)
        assert not set(items) & owned[member]
    m = ranking_metrics(recs["item_ids"].tolist(), [{"c", "d"}] * 4, ks=(10,))
    assert all(v <= 1 for k, v in m.items() if k != "members_evaluated")


@pytest.mark.unit
def test_quality_summary_compares_against_the_best_untuned_baseline_and_never_the_oracle():
    from bench.quality_tables import gains

    tables = {
        "cf": pd.DataFrame({"ndcg_at_10": [0.30, 0.25, 0.9]}, index=["als", "als_untuned", "oracle"]),
        "churn": pd.DataFrame(
            {"roc_auc": [0.80, 0.78, 0.79, 0.70, 0.95]},
            index=["lightgbm", "lightgbm_default", "bg_nbd", "recency_only", "oracle"],
        ),
        "clv": pd.DataFrame({"spearman": [0.50, 0.55]}, index=["lightgbm_expected_rank", "bg_nbd_gamma_gamma"]),
    }
    out = gains(tables, {"cf": {"ndcg_at_10": 0.33}})  # the registered model's logged metric, not a row
    assert out["cf_ndcg_over_untuned"] == pytest.approx(0.33 / 0.25)
    assert out["churn_auc_minus_best_baseline"] == pytest.approx(0.80 - 0.79)
    assert out["clv_spearman_minus_best_baseline"] == pytest.approx(-0.05)
    assert gains({}, {}) == {}


def test_the_paired_bootstrap_gap_is_zero_for_one_score_and_spread_for_two():
    from sklearn.metrics import roc_auc_score

    from training.evaluation.metrics import paired_bootstrap_gap

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    good, noisy = y + rng.normal(0, 0.8, len(y)), y + rng.normal(0, 1.6, len(y))
    gap, sd = paired_bootstrap_gap(roc_auc_score, y, good, good, draws=50)
    assert gap == 0 and sd == 0  # the same score on the same resample never differs
    gap, sd = paired_bootstrap_gap(roc_auc_score, y, good, noisy, draws=200)
    assert gap == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, noisy))
    assert gap > 4 * sd > 0  # a clear lead: positive, several spreads from zero
    _, sd_small = paired_bootstrap_gap(roc_auc_score, y[:200], good[:200], noisy[:200], draws=200)
    assert sd_small > 2 * sd  # ten times fewer rows: about three times the spread
