"""The estimators on generic hand-made tables: calibration without certainties, drivers in
probability points, the uplift learners against a known effect. No world is built."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from models.btyd import BetaGeo, GammaGamma, btyd_scores, rfm_summary
from models.calibration import (
    Beta,
    Platt,
    ShrunkIsotonic,
    brier,
    choose_calibrator,
    expected_calibration_error,
)
from models.churn import MIN_DRIVER_POINTS, ChurnModel, risk_band
from models.uplift import LEARNERS, PropensityModel, UpliftModel
from training.datasets import snapshot_weights

pytestmark = pytest.mark.unit


def _separable(n=2000, seed=0):
    """Raw scores whose low half never churns and high half always does, plus a noisy middle:
    plain isotonic regression answers exactly 0 and 1 on such data."""
    rng = np.random.default_rng(seed)
    raw = rng.random(n)
    y = np.where(raw < 0.4, 0, np.where(raw > 0.6, 1, rng.random(n) < raw)).astype(int)
    return raw, y


@pytest.mark.parametrize("calibrator", [ShrunkIsotonic, Platt, Beta])
def test_no_calibrator_answers_a_certainty(calibrator):
    raw, y = _separable()
    p = calibrator().fit(raw, y).predict(np.linspace(0, 1, 1001))
    assert ((p > 0) & (p < 1)).all()
    assert (np.diff(p) >= -1e-12).all(), "calibration must keep the booster's order"


def test_shrunk_isotonic_keeps_the_rate_of_a_large_block():
    raw, y = _separable()
    p = ShrunkIsotonic().fit(raw, y).predict(np.array([0.1, 0.9]))
    # ~800 rows per end block: the two pseudo-rows move the rate by well under a point
    assert 0 < p[0] < 0.01 and 0.99 < p[1] < 1


def test_choose_calibrator_picks_the_lowest_cross_validated_brier():
    rng = np.random.default_rng(1)
    raw = rng.random(4000)
    truth = 1 / (1 + np.exp(-(3 * np.log(raw / (1 - raw)) - 1)))  # a logistic distortion of raw
    y = (rng.random(4000) < truth).astype(int)
    method, fitted, scores = choose_calibrator(raw, y)
    assert set(scores) == {"platt", "beta", "isotonic"}
    assert scores[method] == min(scores.values())
    assert method in ("platt", "beta"), scores  # the true map is in their family
    assert brier(y, fitted.predict(raw)) < brier(y, raw)
    assert brier(y, fitted.predict(raw)) - brier(y, truth) < 0.002


def test_choose_calibrator_with_one_class_answers_a_rate():
    method, fitted, _ = choose_calibrator(np.linspace(0, 1, 50), np.zeros(50, dtype=int))
    p = fitted.predict(np.array([0.0, 1.0]))
    assert method == "isotonic" and (p > 0).all() and (p < 0.05).all()


def test_choose_calibrator_names_an_unknown_method():
    with pytest.raises(ValueError, match="'sigmoid'"):
        choose_calibrator(np.linspace(0, 1, 50), np.arange(50) % 2, methods=("sigmoid",))


def test_expected_calibration_error():
    y = np.array([0, 0, 1, 1])
    assert expected_calibration_error(y, np.array([0.05, 0.05, 0.95, 0.95])) == pytest.approx(0.05)
    # one bin (0.5): observed rate 0.5, mean prediction 0.5
    assert expected_calibration_error(y, np.full(4, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(4, 1.0)) == pytest.approx(0.5)


def _generic_table(n=4000, seed=3):
    X, y = make_classification(
        n_samples=n, n_features=12, n_informative=6, weights=[0.75], flip_y=0.05, random_state=seed
    )
    return pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])]), y


def test_churn_defaults_do_no_worse_than_plain_lightgbm_on_a_generic_table():
    X, y = _generic_table()
    ours, plain = [], []
    for fit, out in StratifiedKFold(3, shuffle=True, random_state=0).split(X, y):
        model = ChurnModel().fit(X.iloc[fit], y[fit])
        p = model.predict_proba(X.iloc[out])
        assert ((p > 0) & (p < 1)).all(), "a calibrated probability of exactly 0 or 1"
        ours.append(roc_auc_score(y[out], p))
        bare = lgb.LGBMClassifier(verbose=-1, random_state=0).fit(X.iloc[fit], y[fit])
        plain.append(roc_auc_score(y[out], bare.predict_proba(X.iloc[out])[:, 1]))
    assert np.mean(ours) >= np.mean(plain) - 0.005, (ours, plain)


def test_churn_sample_weights_let_the_latest_snapshot_lead():
    # the earlier snapshot ran the other way round (f0 then lowered the risk): weighted by
    # snapshot, the booster follows the latest one; unweighted, the two cancel out
    rng = np.random.default_rng(0)
    n = 4000
    stamps = np.repeat(pd.to_datetime(["2025-01-01", "2025-02-01"]), n // 2)
    X = pd.DataFrame({"f0": rng.normal(size=n), "f1": rng.normal(size=n)})
    sign = np.where(stamps == stamps.max(), 1.0, -1.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * sign * X["f0"].to_numpy()))).astype(int)
    X_new = pd.DataFrame({"f0": rng.normal(size=2000), "f1": rng.normal(size=2000)})
    y_new = (rng.random(2000) < 1 / (1 + np.exp(-2 * X_new["f0"].to_numpy()))).astype(int)
    weights = snapshot_weights(stamps, 0.1)
    assert sorted(set(weights.tolist())) == pytest.approx([0.1, 1.0])
    weighted = ChurnModel(linear_weight=0).fit(X, y, sample_weight=weights)
    alike = ChurnModel(linear_weight=0).fit(X, y)
    assert roc_auc_score(y_new, weighted.predict_raw(X_new)) > 0.8
    assert roc_auc_score(y_new, alike.predict_raw(X_new)) < 0.7
    for bad in (weights[:-1], np.zeros(n), -weights, np.full(n, np.nan)):
        with pytest.raises(ValueError, match="sample_weight"):
            ChurnModel().fit(X, y, sample_weight=bad)


def test_snapshot_weights_fall_by_the_decay_from_the_latest_snapshot():
    stamps = pd.to_datetime(["2025-03-01", "2025-01-01", "2025-02-01", "2025-03-01"])
    assert snapshot_weights(stamps, 0.5).tolist() == [1.0, 0.25, 0.5, 1.0]
    assert snapshot_weights(stamps, 1.0).tolist() == [1.0] * 4
    assert snapshot_weights(stamps, 0.0).tolist() == [1.0, 0.0, 0.0, 1.0]  # the latest alone
    with pytest.raises(ValueError, match="snapshot decay"):
        snapshot_weights(stamps, 1.5)


def test_churn_job_rejects_a_bad_snapshot_decay_before_any_run_starts(tmp_path):
    """A caller of the job (not only the CLI) learns of a bad decay before an MLflow run is opened
    or a frame is read: nothing is written under the data folder."""
    from kernel.settings import Settings
    from training.jobs import churn

    with pytest.raises(ValueError, match="snapshot decay must lie in \\[0, 1\\], not -0.1"):
        churn.run(Settings(data_dir=tmp_path), snapshot_decay=-0.1)
    assert list(tmp_path.iterdir()) == []


def test_clv_defaults_do_no_worse_than_plain_lightgbm_on_a_generic_spend_table():
    """Spend with many zeros and a long tail (a Tweedie-like table), 3-fold: rank correlation at
    least plain ``LGBMRegressor()``'s, with the tree counts chosen by early stopping."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold

    from models.clv import CLVModel

    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(4000, 8)), columns=[f"f{i}" for i in range(8)])
    mean = np.exp(0.8 * X["f0"] - 0.5 * X["f1"] + 0.3 * X["f2"] * X["f3"])
    buys = rng.random(len(X)) < 1 / (1 + np.exp(-(X["f0"] + X["f4"])))
    y = np.where(buys, rng.gamma(2.0, mean / 2.0), 0.0)
    ours, plain, trees = [], [], []
    for fit, out in KFold(3, shuffle=True, random_state=0).split(X):
        model = CLVModel().fit(X.iloc[fit], y[fit])
        ours.append(spearmanr(y[out], model.predict(X.iloc[out]))[0])
        trees.append(model.n_trees_)
        bare = lgb.LGBMRegressor(verbose=-1, random_state=0).fit(X.iloc[fit], y[fit])
        plain.append(spearmanr(y[out], bare.predict(X.iloc[out]))[0])
    assert np.mean(ours) >= np.mean(plain) - 0.005, (ours, plain)
    assert all(t < 1000 for t in trees), trees  # stopped early, not at the ceiling


@pytest.mark.unit
def test_clv_trees_do_not_depend_on_the_seed():
    """No row or column subsampling: the same rows give the same value ranking whatever the seed
    (on CDNOW the sampled trees ranked long-dormant members by chance, bench/external_data.py)."""
    from models.clv import CLVModel

    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(2000, 6)), columns=[f"f{i}" for i in range(6)])
    y = np.where(rng.random(len(X)) < 0.3, np.exp(X["f0"]), 0.0)
    first, second = (CLVModel(params={"n_estimators": 60}, seed=s).fit(X, y).predict(X) for s in (1, 2))
    np.testing.assert_array_equal(first, second)


def _spend_table(n: int = 3000, seed: int = 5) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Two snapshots of spend: buying depends on f0, the amount on f1; the later snapshot spends 10x."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"f{i}" for i in range(5)])
    snapshot = np.where(np.arange(n) < n // 2, 1, 2)
    buys = rng.random(n) < 1 / (1 + np.exp(-1.5 * X["f0"]))
    y = np.where(buys, rng.gamma(2.0, np.exp(0.7 * X["f1"])) * np.where(snapshot == 2, 10.0, 1.0), 0.0)
    return X, y, snapshot


@pytest.mark.unit
def test_clv_value_keeps_the_expected_rank_order_and_is_in_currency():
    """The value is a strictly increasing map of the expected rank (no ties the rank does not
    have), so it orders members exactly as the rank does, and it is currency: in-sample its
    weighted mean is that of spend (interpolated between the isotonic steps' centres, not equal)."""
    from scipy.stats import spearmanr

    from models.clv import CLVModel

    X, y, snapshot = _spend_table()
    weights = np.where(snapshot == 2, 1.0, 0.2)
    model = CLVModel().fit(X, y, snapshots=snapshot, sample_weight=weights)
    rank, value = model.expected_rank(X), model.predict(X)
    assert ((rank > 0) & (rank < 1)).all()
    assert spearmanr(rank, value)[0] == pytest.approx(1.0)
    assert len(np.unique(value)) == len(np.unique(rank))
    assert np.average(value, weights=weights) == pytest.approx(np.average(y, weights=weights), rel=0.05)
    # the non-buyers' share is the latest snapshot's; a member who surely buys ranks above z / 2
    assert model.non_buyers_ == pytest.approx(float((y[snapshot == 2] == 0).mean()))
    assert spearmanr(rank, X["f0"])[0] > 0.5 and spearmanr(rank, X["f1"])[0] > 0.1


@pytest.mark.unit
def test_clv_expected_rank_beats_expected_spend_where_a_few_spend_very_much():
    """Spearman scores an order in which every non-buyer ties: a model of expected spend lets a
    few large baskets decide it, the expected rank does not."""
    from scipy.stats import spearmanr

    from models.clv import CLVModel

    rng = np.random.default_rng(11)
    X = pd.DataFrame(rng.normal(size=(6000, 4)), columns=[f"f{i}" for i in range(4)])
    buys = rng.random(len(X)) < 1 / (1 + np.exp(-(X["f0"] - 0.5)))
    whale = rng.random(len(X)) < 0.02 * (X["f2"] > 1)  # rare, huge and barely predictable
    y = np.where(buys, rng.gamma(2.0, np.exp(0.5 * X["f1"])) * np.where(whale, 200.0, 1.0), 0.0)
    fit, out = np.arange(4000), np.arange(4000, 6000)
    ours = CLVModel().fit(X.iloc[fit], y[fit]).predict(X.iloc[out])
    tweedie = lgb.LGBMRegressor(objective="tweedie", n_estimators=200, learning_rate=0.05, verbose=-1)
    theirs = tweedie.fit(X.iloc[fit], y[fit]).predict(X.iloc[out])
    assert spearmanr(y[out], ours)[0] > spearmanr(y[out], theirs)[0] + 0.01


@pytest.mark.unit
def test_clv_refuses_spend_without_buyers_and_bad_weights():
    from models.clv import CLVModel

    X, y, _ = _spend_table(400)
    with pytest.raises(ValueError, match="fewer than two rows with spend above 0"):
        CLVModel().fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="sample_weight must hold one finite"):
        CLVModel().fit(X, y, sample_weight=np.ones(3))


@pytest.mark.unit
def test_clv_model_saved_before_the_expected_rank_still_predicts():
    """A champion registered by the Tweedie version (one booster in ``model_``) is scored by the
    promotion gate with today's code."""
    from models.clv import CLVModel
    from models.features import FeatureMatrix

    X, y, _ = _spend_table(600)
    old = CLVModel.__new__(CLVModel)
    old.horizon_days, old.params, old.seed = 90, {}, 7
    old.features_ = FeatureMatrix().fit(X)
    old.model_ = lgb.LGBMRegressor(objective="tweedie", n_estimators=20, verbose=-1).fit(old.features_.transform(X), y)
    np.testing.assert_allclose(old.predict(X), np.clip(old.model_.predict(old.features_.transform(X)), 0, None))


def test_drivers_are_probability_points_that_add_up_to_the_gap_to_the_population():
    X, y = _generic_table(3000)
    model = ChurnModel().fit(X, y)
    M = model.features_.to_numpy(X)
    p, points = model.contributions(M)
    # the population's log-odds: the booster's expected value (the linear score is 0 at the mean)
    expected = model.booster_.booster_.predict(M, pred_contrib=True)[:1, -1]
    population = model._calibrated(1 / (1 + np.exp(-expected)))
    np.testing.assert_allclose(points.sum(axis=1), p - population, atol=1e-9)
    explained = model.explain(X.head(400))
    for (_, row), pts in zip(explained.iterrows(), points[:400], strict=True):
        if row["risk_band"] == "low":
            assert row["top_drivers"] == []
        for d in row["top_drivers"]:
            assert d["contribution"] >= MIN_DRIVER_POINTS - 1e-4
            assert d["contribution"] == pytest.approx(pts[model.features_.columns_.index(d["feature"])], abs=1e-4)
    assert (explained["risk_band"] != "low").any() and explained["top_drivers"].map(len).gt(0).any()
    listed = model.churn_list(X.head(400), drivers=True)
    assert listed["top_driver"].isna().eq(explained["top_drivers"].map(len).eq(0)).all()
    assert (risk_band(listed["churn_probability"]) == listed["risk_band"]).all()


def test_the_churn_list_explains_only_the_members_above_the_lowest_band(monkeypatch):
    """The SHAP pass is the list's cost: members in the lowest band name no driver, so they skip it,
    and every other member's top driver is the one the service names first."""
    X, y = _generic_table(3000)
    model = ChurnModel().fit(X, y)
    explained = model.explain(X.head(600), top=1)
    seen = []
    contributions = model.contributions
    monkeypatch.setattr(model, "contributions", lambda M: seen.append(len(M)) or contributions(M))
    listed = model.churn_list(X.head(600), drivers=True)
    low = listed["risk_band"].eq("low")
    assert 0 < low.sum() < len(listed)
    assert seen == [int((~low).sum())]
    assert listed.loc[low, "top_driver"].isna().all()
    assert listed["top_driver"].tolist() == [d[0]["feature"] if d else None for d in explained["top_drivers"]]


def _randomised_offers(n=6000, seed=5):
    """Two offers, randomised arms (70% treated), a known effect that depends on x0 and the offer."""
    rng = np.random.default_rng(seed)
    x0, x1 = rng.normal(size=n), rng.normal(size=n)
    offer = rng.choice(["A", "B"], n)
    t = rng.random(n) < 0.7
    tau = np.where(offer == "A", 0.15 * (x0 > 0), -0.05 + 0.1 * (x1 > 0))
    p0 = 0.1 + 0.05 * (x1 > 0)
    y = (rng.random(n) < p0 + t * tau).astype(int)
    X = pd.DataFrame({"member_id": [f"M{i % (n // 2)}" for i in range(n)], "x0": x0, "x1": x1, "offer_id": offer})
    return X, t, y, tau


@pytest.mark.parametrize("learner", LEARNERS)
def test_every_uplift_learner_recovers_a_known_effect(learner):
    X, t, y, tau = _randomised_offers()
    model = UpliftModel(learner=learner).fit(X, t, y, treatment_propensity=np.full(len(y), 0.7))
    pred = model.predict(X)
    assert np.corrcoef(pred["uplift"], tau)[0, 1] > 0.6
    assert (pred["p_convert_treated"].between(0, 1)).all()


def test_the_offer_models_learn_what_a_response_is_worth():
    """Responses to A are 20-unit orders, to B 60-unit ones; rows without a response carry none."""
    X, t, y, _ = _randomised_offers()
    worth = np.where(X["offer_id"] == "A", 20.0, 60.0)
    revenue = np.where(y == 1, worth + np.random.default_rng(3).normal(0, 2, len(y)), 0.0)
    uplift = UpliftModel().fit(X, t, y, revenue=revenue).predict(X)
    propensity = PropensityModel().fit(X[t], y[t], revenue[t]).predict(X)
    for pred in (uplift, propensity):
        for offer, value in (("A", 20.0), ("B", 60.0)):
            assert pred.loc[X["offer_id"] == offer, "order_value"].mean() == pytest.approx(value, rel=0.05)
    assert UpliftModel().fit(X, t, y).predict(X)["order_value"].isna().all()  # nothing to learn from
    few = np.where(np.arange(len(y)) < 100, revenue, 0.0)  # fewer than MIN_VALUE_ROWS responses with revenue
    assert UpliftModel().fit(X, t, y, revenue=few).predict(X)["order_value"].isna().all()


def test_the_control_arm_model_is_blind_to_what_the_offer_is():
    """A control member never saw the offer: its id and cost cannot move their conversion, so the
    control arm's model does not read them; P(convert | control) is the same whichever offer."""
    X, t, y, _ = _randomised_offers()
    X = X.assign(cost=np.where(X["offer_id"] == "A", 1.0, 5.0), offer_category="food")
    swapped = X.assign(offer_id=np.where(X["offer_id"] == "A", "B", "A"), cost=6.0 - X["cost"])
    for learner in ("t", "dr"):
        model = UpliftModel(learner=learner).fit(X, t, y, treatment_propensity=np.full(len(y), 0.7))
        assert not {"offer_id", "cost"} & set(model.control_model_.booster_.feature_name())
        assert "offer_category" in model.control_model_.booster_.feature_name()
        np.testing.assert_array_equal(
            model.predict(X)["p_convert_control"], model.predict(swapped)["p_convert_control"]
        )
    seeing = UpliftModel(offer_blind_control=False).fit(X, t, y)
    assert {"offer_id", "cost"} <= set(seeing.control_model_.booster_.feature_name())


def test_uplift_learner_rejects_bad_input():
    X, t, y, _ = _randomised_offers(500)
    with pytest.raises(ValueError, match="learner"):
        UpliftModel(learner="s")
    with pytest.raises(ValueError, match="treatment_propensity"):
        UpliftModel(learner="dr").fit(X, t, y, treatment_propensity=np.ones(len(y)))


# BG/NBD on CDNOW as published by Fader, Hardie & Lee (2005) and in Hardie's spreadsheet
CDNOW = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


def test_bg_nbd_matches_the_published_cdnow_values():
    model = BetaGeo()
    model.params_ = CDNOW
    # a member with 2 repeat purchases, the last in week 30.43 of 38.86: 1.226 in the next 39 weeks
    assert model.expected_purchases(39, 2, 30.43, 38.86) == pytest.approx(1.226, abs=0.001)
    expected = [0.0078, 0.0532, 0.1506, 1.0405, 1.0437, 1.8576]  # E[X(t)], from the fitted (unrounded) values
    np.testing.assert_allclose(
        model.expected_purchases_new(np.array([0.1429, 1.0, 3.0, 31.8571, 32.0, 78.0])), expected, atol=0.003
    )
    assert model.p_no_purchase_new(39) == pytest.approx(0.5737864, abs=1e-6)  # R package BTYD
    assert model.p_alive(0, 0, 10) == 1.0  # no repeat purchase: no chance yet to drop out
    assert 0 < model.p_alive(2, 5.0, 38.86) < model.p_alive(2, 30.43, 38.86) < 1


def _bg_nbd_members(n=8000, seed=0, r=0.5, alpha=10.0, a=0.8, b=2.5):
    rng = np.random.default_rng(seed)
    rate, drop, T = rng.gamma(r, 1 / alpha, n), rng.beta(a, b, n), rng.uniform(100, 400, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        t = rng.exponential(1 / rate[i])
        while t <= T[i]:
            x[i], t_x[i] = x[i] + 1, t
            if rng.random() < drop[i]:
                break
            t += rng.exponential(1 / rate[i])
    return x, t_x, T


def test_bg_nbd_recovers_its_parameters_from_simulated_members():
    x, t_x, T = _bg_nbd_members()
    params = BetaGeo().fit(x, t_x, T).params_
    for name, true in {"r": 0.5, "alpha": 10.0, "a": 0.8, "b": 2.5}.items():
        assert params[name] == pytest.approx(true, rel=0.2), (name, params)


def test_gamma_gamma_recovers_spend_and_shrinks_towards_the_population():
    rng = np.random.default_rng(2)
    p, q, gamma = 6.0, 4.0, 15.0
    nu = rng.gamma(q, 1 / gamma, 5000)
    x = rng.integers(1, 8, 5000)
    m = np.array([rng.gamma(p, 1 / v, k).mean() for v, k in zip(nu, x, strict=True)])
    model = GammaGamma().fit(x, m)
    assert model.params_["p"] / (model.params_["q"] - 1) * model.params_["gamma"] == pytest.approx(
        p * gamma / (q - 1), rel=0.1
    )
    population = model.expected_spend(0, 0.0)
    one, many = model.expected_spend(np.array([1, 7]), np.array([100.0, 100.0]))
    assert population < one < many < 100  # more purchases: closer to the member's own mean
    with pytest.raises(ValueError, match="repeat purchases"):
        GammaGamma().fit(np.array([1, 0]), np.array([5.0, 0.0]))


def test_btyd_scores_are_point_in_time():
    orders = pd.DataFrame(
        {
            "member_id": ["a", "a", "a", "b", "b"] + [f"m{i}" for i in range(60)] * 2,
            "ts": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-06-01", "2024-01-05", "2024-03-01"])
            .append(pd.date_range("2024-01-01", periods=60, freq="D"))
            .append(pd.date_range("2024-03-01", periods=60, freq="D")),
            "amount": [10.0, 20.0, 30.0, 5.0, 7.0] + list(np.linspace(5, 50, 60)) * 2,
        }
    )
    summary = rfm_summary(orders, pd.Timestamp("2024-04-01"))
    assert summary.loc["a"].to_dict() == {"x": 1.0, "t_x": 31.0, "T": 91.0, "m": 20.0, "spend": 30.0}
    scores = btyd_scores(orders, pd.Timestamp("2024-04-01"), 90)
    assert ((scores["p_no_purchase"] > 0) & (scores["p_no_purchase"] < 1)).all()
    assert (scores["expected_spend"] > 0).all()
    later = btyd_scores(orders, pd.Timestamp("2024-07-01"), 90)
    assert not scores.loc["a"].equals(later.loc["a"])  # the June purchase only counts after it happened
