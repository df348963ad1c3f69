"""The untuned baselines the jobs and benches compare with, on small hand-made tables: no world needed."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from models.features import FeatureMatrix
from training.evaluation.baselines import btyd_holdout, untuned_lightgbm

pytestmark = pytest.mark.unit


def _table(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "member_id": [f"m{seed}_{i}" for i in range(n)],  # an id: never a model input
            "recency_days": rng.exponential(40, n),
            "frequency_365d": rng.poisson(3, n).astype(float),
            "channel": rng.choice(["web", "store"], n),
        }
    )
    risk = 1 / (1 + np.exp(-(frame["recency_days"] / 40 - frame["frequency_365d"] / 3)))
    churned = (rng.random(n) < risk).astype(int)
    spend = rng.gamma(2.0, 10.0, n) * (1 - churned)
    return frame, churned, spend


def test_untuned_lightgbm_is_the_library_default_on_the_models_inputs():
    train, churned, spend = _table(600, 0)
    holdout, _, _ = _table(200, 1)
    features = FeatureMatrix().fit(train)
    M, M_holdout = features.transform(train), features.transform(holdout)
    p = untuned_lightgbm(features, train, churned, holdout, seed=3, classifier=True)
    bare = lgb.LGBMClassifier(verbose=-1, random_state=3).fit(M, churned).predict_proba(M_holdout)[:, 1]
    np.testing.assert_allclose(p, bare)
    assert ((p > 0) & (p < 1)).all() and len(np.unique(p)) > 20  # a probability per member, not a constant
    value = untuned_lightgbm(features, train, spend, holdout, seed=3, classifier=False)
    np.testing.assert_allclose(value, lgb.LGBMRegressor(verbose=-1, random_state=3).fit(M, spend).predict(M_holdout))
    tuned = lgb.LGBMClassifier(verbose=-1, random_state=3, num_leaves=7).fit(M, churned).predict_proba(M_holdout)[:, 1]
    assert not np.allclose(p, tuned)  # the comparison above can tell another setting apart


def test_btyd_holdout_keeps_the_members_order_and_scores_the_unknown_as_gone():
    repeaters = [f"m{i}" for i in range(60)]
    orders = pd.DataFrame(
        {
            "member_id": ["a", "a", "a"] + repeaters * 2,
            "ts": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-06-01"])
            .append(pd.date_range("2024-01-01", periods=60, freq="D"))
            .append(pd.date_range("2024-02-15", periods=60, freq="D")),
            "amount": [10.0, 20.0, 30.0] + list(np.linspace(5, 50, 60)) * 2,
        }
    )
    members = ["m5", "newcomer", "a", "m0"]  # the newcomer buys only after the cutoff, if ever
    out = btyd_holdout(orders, pd.Timestamp("2024-04-01"), 90, members)
    assert list(out.columns) == ["p_no_purchase", "expected_spend"] and len(out) == len(members)
    assert out.loc[1].tolist() == [1.0, 0.0]
    scored = out.drop(index=1)
    assert ((scored["p_no_purchase"] > 0) & (scored["p_no_purchase"] < 1)).all()
    assert (scored["expected_spend"] > 0).all()
    # in the members' order: "a" (idle since 1 Feb) is likelier gone than m5 (bought again on 20 Feb)
    assert out.loc[2, "p_no_purchase"] > out.loc[0, "p_no_purchase"]
