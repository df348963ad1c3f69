"""The promotion gate's rule and the bootstrap standard error behind its noise tolerance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.evaluation.metrics import gap_standard_error
from training.jobs import JOBS
from training.registry import gate

pytestmark = pytest.mark.unit


def test_without_a_tolerance_the_challenger_must_reach_champion_plus_margin():
    assert gate("qini", 0.0100, 0.0100, 0.0, 0.004, 0.0)[0]  # a tie clears a zero margin
    assert not gate("qini", 0.0099, 0.0100, 0.0, 0.004, 0.0)[0]  # the standard error is not used
    assert not gate("auc", 0.80, 0.79, 0.02, 0.0, 0.0)[0]
    promoted, reason = gate("auc", 0.81, 0.79, 0.02, 0.0, 0.0)
    assert promoted and reason == "auc 0.8100 >= champion 0.7900 + 0.02"


def test_a_tolerance_promotes_a_challenger_behind_by_less_than_its_noise_and_no_more():
    # behind by 0.0022 with a standard error of 0.0019: within 1.645 SE, so promoted
    promoted, reason = gate("qini", 0.0062, 0.0084, 0.0, 0.0019, 1.645)
    assert promoted and "1.645 x SE 0.0019" in reason
    # behind by 0.0040 with the same noise: beyond 1.645 SE (0.0031), so refused
    promoted, reason = gate("qini", 0.0044, 0.0084, 0.0, 0.0019, 1.645)
    assert not promoted and reason.startswith("qini 0.0044 < champion 0.0084")
    # the margin still counts on top of the tolerance
    assert not gate("qini", 0.0084, 0.0084, 0.01, 0.0019, 1.645)[0]


def test_only_the_offer_job_tolerates_noise_by_default():
    assert JOBS["uplift"].tolerance_se == pytest.approx(1.645)
    assert all(JOBS[job].tolerance_se == 0 for job in ("cf", "churn", "clv", "fraud"))


def _mean_gap_scorers(frame: pd.DataFrame):
    a, b = frame["a"].to_numpy(), frame["b"].to_numpy()
    return (lambda rows: float(a[rows].mean())), (lambda rows: float(b[rows].mean()))


def test_the_gap_standard_error_matches_the_standard_error_of_a_mean_difference():
    rng = np.random.default_rng(3)
    n = 2000
    frame = pd.DataFrame({"member_id": np.arange(n), "a": rng.normal(0, 1, n), "b": rng.normal(0, 1, n)})
    se = gap_standard_error(*_mean_gap_scorers(frame), frame["member_id"].to_numpy(), draws=400, seed=1)
    expected = np.std(frame["a"] - frame["b"]) / np.sqrt(n)
    assert se == pytest.approx(expected, rel=0.12)


def test_the_gap_standard_error_resamples_members_whole():
    # every member's value repeated on four rows: the rows carry the information of one draw
    rng = np.random.default_rng(4)
    n = 500
    one = pd.DataFrame({"member_id": np.arange(n), "a": rng.normal(0, 1, n), "b": 0.0})
    rows = one.loc[one.index.repeat(4)].reset_index(drop=True)
    by_member = gap_standard_error(*_mean_gap_scorers(rows), rows["member_id"].to_numpy(), draws=400, seed=1)
    by_row = gap_standard_error(*_mean_gap_scorers(rows), np.arange(len(rows)), draws=400, seed=1)
    expected = np.std(one["a"]) / np.sqrt(n)
    assert by_member == pytest.approx(expected, rel=0.12)
    assert by_row == pytest.approx(expected / 2, rel=0.12)  # treated as 2,000 draws, it would halve


def test_one_model_against_itself_has_no_gap_and_no_noise():
    frame = pd.DataFrame({"member_id": np.arange(300) % 100, "a": np.linspace(0, 1, 300)})
    score, _ = _mean_gap_scorers(frame.assign(b=0.0))
    assert gap_standard_error(score, score, frame["member_id"].to_numpy(), draws=50) == 0.0


def test_the_offer_jobs_scorer_predicts_once_and_scores_rows_as_the_job_does():
    from models.uplift import UpliftModel
    from tests.test_estimators import _randomised_offers
    from training.jobs import uplift

    X, t, y, _ = _randomised_offers(n=3000)
    model = UpliftModel().fit(X, t, y)
    holdout = X.assign(
        treatment=t.astype(int), converted=y, redeemed=y * t, campaign_id="CMP1", propensity=np.nan, revenue=0.0
    )
    scorer = uplift.holdout_scorer(model, holdout)
    rows = np.random.default_rng(0).integers(0, len(holdout), len(holdout))
    resample = holdout.iloc[rows].reset_index(drop=True)
    assert scorer(rows) == pytest.approx(uplift.score_holdout(model, resample), abs=1e-12)
    assert scorer(np.arange(len(holdout))) == uplift.score_holdout(model, holdout) != scorer(rows)


class _Fixed:
    """A stand-in offer model whose uplift is a given column of the rows it scores."""

    def __init__(self, column: str):
        self.column = column

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"uplift": X[self.column].to_numpy()}, index=X.index)


def _two_campaigns(n=4000, seed=2):
    rng = np.random.default_rng(seed)
    tau = rng.uniform(0, 0.3, n)
    t = rng.random(n) < 0.5
    y = (rng.random(n) < 0.05 + t * tau).astype(int)
    return pd.DataFrame(
        {
            "member_id": [f"M{i}" for i in range(n)],
            "campaign_id": np.where(np.arange(n) < n // 2, "CMP1", "CMP2"),
            "event_timestamp": pd.to_datetime(np.where(np.arange(n) < n // 2, "2024-01-01", "2024-03-01")),
            "treatment": t.astype(int),
            "converted": y,
            "redeemed": y * t,
            "revenue": 0.0,
            "propensity": np.nan,
            "true_effect": tau,
            "near_true": tau + rng.normal(0, 0.001, n),
            "noise": rng.random(n),
        }
    )


def test_a_refitted_offer_model_is_gated_through_its_holdout_twin():
    """The registered offer model learned from its holdout; the gate must score the fit that did not."""
    from training.jobs import uplift

    frame = _two_campaigns()
    twin = _Fixed("true_effect")
    refitted = uplift.with_twin(_Fixed("noise"), twin)
    assert uplift.gate_view(refitted) is twin and uplift.gate_view(twin) is twin  # no twin: itself
    assert uplift.score_holdout(refitted, frame) == uplift.score_holdout(twin, frame)
    assert uplift.score_holdout(refitted, frame) > uplift.score_holdout(_Fixed("noise"), frame) + 0.01
    rows = np.arange(0, len(frame), 2)
    assert uplift.holdout_scorer(refitted, frame)(rows) == uplift.holdout_scorer(twin, frame)(rows)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        # every learner ranks by the true effect, give or take a hair: X scores a hair higher
        # on validation, within the noise, and the T-learner stays
        ({"t": "near_true", "x": "true_effect", "dr": "near_true", "r": "near_true"}, "t"),
        # the T-learner ranks at random and the X-learner by the effect: a clear lead, so X
        ({"t": "noise", "x": "true_effect", "dr": "noise", "r": "noise"}, "x"),
    ],
)
def test_auto_keeps_the_t_learner_unless_another_leads_it_clearly(monkeypatch, columns, expected):
    from training.jobs import uplift

    monkeypatch.setattr(uplift, "fit_uplift", lambda frame, learner, params, seed: _Fixed(columns[learner]))
    chosen, table = uplift.choose_learner(_two_campaigns(), None, seed=0)
    assert chosen == expected
    table = table.set_index("learner")
    assert set(table.index) == set(columns) and np.isnan(table.loc["t", "lead_se"])  # T is the yardstick
    others = table.drop(index="t")
    clear = others["lead_over_default"] > uplift.TOLERANCE_SE * others["lead_se"]
    assert list(others.index[clear]) == ([] if expected == "t" else [expected])
    assert others.loc["x", "lead_se"] > 0  # x differs from t in both cases, so its lead has a spread
    assert others.loc["x", "lead_over_default"] > 0  # X scored higher in both cases: not enough alone
