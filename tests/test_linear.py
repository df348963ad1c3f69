"""The churn model's smooth linear score, on hand-made tables: no world needed."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from models.churn import ChurnModel
from models.linear import SignedLogLinear, SignedLogRidge

pytestmark = pytest.mark.unit


def _idle_table(n: int = 4000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Risk rises with idle days (0-120 in training); a category, a constant and noise beside it."""
    rng = np.random.default_rng(seed)
    idle = rng.uniform(0, 120, n)
    X = pd.DataFrame(
        {
            "recency_days": idle,
            "orders_total": rng.poisson(4, n).astype(float),
            "channel": rng.choice(["web", "store"], n),
            "sends_90d": np.zeros(n),
            "best_send_hour": np.full(n, -1.0),  # none known yet: constant, with a rounding-error spread
        }
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-(idle - 60) / 20))).astype(int)
    return X, y


def test_contributions_add_up_to_the_score_and_skip_what_has_no_order():
    X, y = _idle_table()
    web = (X["channel"] == "web").astype(float)
    M = np.column_stack([X["recency_days"], X["orders_total"], web, X["sends_90d"], X["best_send_hour"]])
    linear = SignedLogLinear().fit(M, y, usable=np.array([True, True, False, True, True]))
    assert linear.columns_.tolist() == [0, 1]  # the category code and the constant columns are left out
    parts = linear.contributions(M)
    np.testing.assert_allclose(parts.sum(axis=1), linear.decision(M))
    assert (parts[:, 2:] == 0).all()
    # a column constant in training moves nothing when it varies later (engagement starts)
    later = M[:5].copy()
    later[:, 4] = [9.0, 18.0, 20.0, 7.0, 12.0]
    np.testing.assert_allclose(linear.decision(later), linear.decision(M[:5]))
    # nor does an outlier far past the training range weigh more than MAX_SD deviations
    far = M[:2].copy()
    far[:, 0] = [1e6, 1e12]
    far_parts = linear.contributions(far)[:, 0]
    assert far_parts[0] == pytest.approx(far_parts[1]) and far_parts[0] == pytest.approx(10 * linear.coef_[0])
    assert linear.coef_[0] > 0  # more idle days, more risk
    # a missing value counts as the training mean: it moves nothing
    gap = M[:3].copy()
    gap[:, 0] = np.nan
    assert (linear.contributions(gap)[:, 0] == 0).all()
    # the population: a member at the mean of every column scores 0
    at_mean = np.sign(linear.center_) * np.expm1(np.abs(linear.center_))
    row = np.zeros((1, 5))
    row[0, linear.columns_] = at_mean
    assert linear.decision(row)[0] == pytest.approx(0.0, abs=1e-9)


def test_the_churn_score_keeps_ranking_past_the_idle_days_it_was_fitted_on():
    """Trees are flat beyond the training range; the linear score is not, so the model still tells
    a member idle for 200 days from one idle for 120 (later cutoffs see longer gaps than training)."""
    X, y = _idle_table()
    model = ChurnModel(seed=1).fit(X, y)
    booster_only = ChurnModel(seed=1, linear_weight=0).fit(X, y)
    assert booster_only.linear_ is None
    later = pd.DataFrame(
        {
            "recency_days": [120.0, 200.0, 400.0],
            "orders_total": 4.0,
            "channel": "web",
            "sends_90d": 0.0,
            "best_send_hour": -1.0,
        }
    )
    flat = booster_only.predict_raw(later)
    assert flat[0] == pytest.approx(flat[2])  # what the trees alone cannot see
    rising = model.predict_raw(later)
    assert rising[0] < rising[1] < rising[2]
    p = model.predict_proba(later)
    assert ((p > 0) & (p < 1)).all() and p[0] <= p[1] <= p[2]  # calibration keeps the order


def test_the_model_score_is_the_booster_and_the_weighted_linear_log_odds():
    X, y = _idle_table(seed=2)
    model = ChurnModel(seed=3, linear_weight=0.5).fit(X, y)
    M = model.features_.to_numpy(X.head(50))
    log_odds = model.booster_.booster_.predict(M, raw_score=True) + 0.5 * model.linear_.decision(M)
    np.testing.assert_allclose(model.predict_raw(X.head(50)), 1 / (1 + np.exp(-log_odds)))
    # a model saved before the linear score existed has no linear_: it scores with its booster alone
    del model.linear_
    np.testing.assert_allclose(model.predict_raw(X.head(50)), model.booster_.booster_.predict(M))


def test_an_all_missing_column_is_left_out_without_a_warning():
    rng = np.random.default_rng(4)
    M = np.column_stack([rng.normal(size=200), np.full(200, np.nan)])
    y = (M[:, 0] + rng.normal(size=200) > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linear = SignedLogLinear().fit(M, y, usable=np.array([True, True]))
    assert linear.columns_.tolist() == [0] and linear.coef_[0] > 0


def test_a_table_without_an_ordered_column_that_varies_scores_zero():
    M = np.column_stack([np.tile([0.0, 1.0, 2.0], 20), np.full(60, 5.0)])  # a category code, a constant
    y = np.tile([0, 1], 30)
    linear = SignedLogLinear().fit(M, y, usable=np.array([False, True]))
    assert linear.columns_.tolist() == [] and (linear.decision(M) == 0).all()
    assert linear.contributions(M).shape == (60, 2) and (linear.contributions(M) == 0).all()


def test_ridge_fits_the_signed_log_and_skips_what_has_no_order():
    """The regression form reads the same columns as the logistic one: a target linear in
    log(1 + spend) is recovered; a category code and a constant are left out; with nothing usable
    every row gets the training mean."""
    rng = np.random.default_rng(2)
    spend = rng.gamma(1.5, 200.0, 3000)
    M = np.column_stack([spend, rng.integers(0, 3, 3000).astype(float), np.full(3000, 4.0)])
    y = 0.3 * np.log1p(spend) + rng.normal(0, 0.05, 3000)
    ridge = SignedLogRidge(alpha=1.0).fit(M, y, usable=np.array([True, False, True]))
    assert ridge.columns_.tolist() == [0]
    assert np.corrcoef(ridge.predict(M), y)[0, 1] > 0.95
    flat = SignedLogRidge().fit(M, y, usable=np.array([False, False, True]))
    np.testing.assert_allclose(flat.predict(M), y.mean())
