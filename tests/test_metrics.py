"""Evaluation metrics on hand-made inputs with known answers: no world needed."""

from __future__ import annotations

import numpy as np
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
