"""Campaign evaluation: statistics on data with a known effect, and the report on the simulator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import cli_args
from training.evaluation.campaign import (
    evaluate_groups,
    mean_difference,
    roi_decision,
    true_economics,
    two_proportion,
)


@pytest.mark.unit
def test_roi_decision_follows_the_programme_thresholds():
    assert [roi_decision(r) for r in (-1, 9.99, 10, 25, 25.01, float("nan"))] == [
        "adjust",
        "adjust",
        "keep",
        "keep",
        "expand",
        "n/a",
    ]


@pytest.mark.unit
def test_intervals_cover_a_known_effect_and_p_values_separate_null_from_effect():
    rng = np.random.default_rng(3)
    covered, rejections_null = 0, 0
    for _ in range(200):
        t, c = rng.random(2000) < 0.15, rng.random(2000) < 0.10
        diff, lo, hi, p = two_proportion(t.sum(), len(t), c.sum(), len(c))
        covered += lo <= 0.05 <= hi
        null = rng.random(2000) < 0.10
        rejections_null += two_proportion(null.sum(), 2000, c.sum(), 2000)[3] < 0.05
    assert 0.9 <= covered / 200 <= 0.99  # ~95% coverage
    assert rejections_null / 200 <= 0.1  # ~5% false positives under the null
    y1, y0 = rng.normal(12, 5, 3000), rng.normal(10, 5, 3000)
    diff, lo, hi, p = mean_difference(y1, y0)
    assert lo < 2 < hi and p < 1e-6


@pytest.mark.unit
def test_roi_uses_incremental_revenue_against_control_not_total_sales():
    n = 1000
    df = pd.DataFrame(
        {
            "treatment": [True] * n + [False] * n,
            "converted": [True] * 200 + [False] * 800 + [True] * 100 + [False] * 900,
            "redeemed": [True] * 150 + [False] * 850 + [False] * n,
            "revenue": [30.0] * 200 + [0.0] * 800 + [30.0] * 100 + [0.0] * 900,
            "offer_id": "A",
        }
    )
    row = evaluate_groups(df, pd.Series({"A": 1.0}), []).iloc[0]
    assert row["incremental_revenue"] == pytest.approx((6.0 - 3.0) * n)  # 3,000, not 6,000 of total sales
    assert row["benefit_cost"] == pytest.approx(150.0)
    assert row["roi"] == pytest.approx((3000 - 150) / 150) and row["decision"] == "keep"
    pricier = evaluate_groups(df, pd.Series({"A": 2.0}), []).iloc[0]
    assert pricier["roi"] == pytest.approx(9.0) and pricier["decision"] == "adjust"
    assert row["significant"] and row["conversion_lift"] == pytest.approx(0.1)


def _campaign(n: int, revenue_treated: float, revenue_control: float, redeemed: int, noise: float) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    return pd.DataFrame(
        {
            "treatment": [True] * n + [False] * n,
            "converted": True,
            "redeemed": [True] * redeemed + [False] * (2 * n - redeemed),
            "revenue": np.r_[rng.normal(revenue_treated, noise, n), rng.normal(revenue_control, noise, n)],
            "offer_id": "A",
        }
    )


@pytest.mark.unit
def test_each_decision_states_its_reason_and_whether_the_interval_supports_it():
    cost = pd.Series({"A": 1.0})
    # lift 4 per member, cost 0.1 per member: ROI 39; precise, so a confident "expand"
    clear = evaluate_groups(_campaign(4000, 14.0, 10.0, 400, 2.0), cost, []).iloc[0]
    assert clear["decision"] == "expand" and clear["decision_confident"]
    assert clear["roi_ci_low"] > 25 and clear["roi_ci_low"] < clear["roi"] < clear["roi_ci_high"]
    assert clear["reason"].startswith("ROI 38.9 > 25") and "95% CI" in clear["reason"]
    # the same ROI measured on noisy revenue: the interval crosses 25, so the report says so
    noisy = evaluate_groups(_campaign(4000, 14.0, 10.0, 400, 60.0), cost, []).iloc[0]
    assert not noisy["decision_confident"] and "crosses a threshold" in noisy["reason"]
    assert noisy["roi_ci_low"] < 25 < noisy["roi_ci_high"]
    losing = evaluate_groups(_campaign(4000, 10.0, 10.2, 400, 1.0), cost, []).iloc[0]
    assert losing["decision"] == "adjust" and losing["reason"].startswith("loses money")
    free = evaluate_groups(_campaign(500, 11.0, 10.0, 0, 1.0), cost, []).iloc[0]
    assert free["decision"] == "n/a" and "no redemptions" in free["reason"] and not free["decision_confident"]


@pytest.mark.unit
def test_true_economics_counts_incremental_revenue_and_cost_on_the_treated():
    truth = pd.DataFrame(
        {
            "offer_id": ["A", "A", "A", "B", "B"],
            "treatment": [True, True, False, True, True],
            "p_convert_control": [0.1, 0.2, 0.9, 0.3, 0.3],
            "p_convert_treated": [0.3, 0.4, 0.9, 0.2, 0.2],
            "order_value": [50.0, 50.0, 1000.0, 20.0, 20.0],
            "cost": [0.5, 0.5, 0.0, 1.0, 1.0],
        }
    )
    out = true_economics(truth, ["offer_id"]).set_index("offer_id")
    assert out.loc["A", "true_incremental_revenue"] == pytest.approx(20.0)  # the control row is not counted
    assert out.loc["A", "true_roi"] == pytest.approx(19.0) and out.loc["A", "true_decision"] == "keep"
    assert out.loc["B", "true_roi"] == pytest.approx(-3.0) and out.loc["B", "true_decision"] == "adjust"


def test_the_simulated_offers_are_worth_expanding_keeping_or_adjusting_as_designed(settings, pipeline):
    """Truth: each offer's expected ROI on its real audience takes the decision it was built for."""
    truth = pd.read_parquet(settings.ground_truth_dir / "exposures.parquet")
    design = pd.read_parquet(settings.ground_truth_dir / "offer_effects.parquet").set_index("offer_id")
    true = true_economics(truth, ["offer_id"]).set_index("offer_id").join(design["economics"])
    assert set(true["true_decision"]) == {"adjust", "keep", "expand"}
    assert (true["true_decision"] == true["economics"].str.split(":").str[0]).all(), true
    hurting = true[true["economics"] == "adjust: hurts conversion"]
    assert (hurting["true_incremental_revenue"] < 0).all()  # adjusted because they lose conversions


def test_campaign_report_on_the_simulator_recovers_the_true_lift(settings, pipeline):
    from mlflow.tracking import MlflowClient

    from training.jobs.evaluate import evaluate_campaigns

    out = evaluate_campaigns(settings, None, ("tier", "lifecycle_stage"))
    overall = out["overall"].iloc[0]
    exp = pd.read_parquet(settings.curated_dir / "exposures.parquet")
    truth = pd.read_parquet(settings.ground_truth_dir / "uplift.parquet")
    alive = pd.read_parquet(settings.ground_truth_dir / "members.parquet").set_index("member_id")["alive_at_cutoff"]
    true = exp.merge(truth, on=["member_id", "offer_id"])
    true_lift = (true["uplift"] * true["member_id"].map(alive)).mean()
    half_width = (overall["conversion_lift_ci_high"] - overall["conversion_lift_ci_low"]) / 2
    assert abs(overall["conversion_lift"] - true_lift) < 1.5 * half_width  # ~3 SE
    assert set(out["tables"]) == {"campaign", "offer", "tier", "lifecycle_stage"}
    assert out["tables"]["tier"]["treated"].sum() == exp["treatment"].sum()  # every exposure in a segment
    offers = out["tables"]["offer"]
    assert offers["decision"].isin(["adjust", "keep", "expand", "n/a"]).all()
    # a confident measured decision is the true one; the world shows all three
    confident = offers[offers["decision_confident"]]
    assert (confident["decision"] == confident["true_decision"]).all(), offers
    assert {"adjust", "keep", "expand"} <= set(offers["decision"]), offers
    assert any("true_roi is the simulator's ground truth" in n for n in out["notes"])
    html = out["report"].read_text()
    assert html.count("<img") == 2 and "by tier" in html
    names = {a.path for a in MlflowClient().list_artifacts(out["run_id"])}
    assert {"campaign_report.html", "by_offer.json"} <= names


def test_cli_rejects_an_unknown_campaign(settings, pipeline):
    from typer.testing import CliRunner

    from cli.main import app

    res = CliRunner().invoke(app, cli_args(settings, "evaluate", "campaign", "--campaign", "NOPE"))
    assert res.exit_code == 2 and "campaign 'NOPE' not found" in res.output
