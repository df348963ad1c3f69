"""Campaign evaluation: statistics on data with a known effect, and the report on the simulator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import cli_args
from training.evaluation.campaign import evaluate_groups, mean_difference, roi_decision, two_proportion


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
    assert out["tables"]["offer"]["decision"].isin(["adjust", "keep", "expand", "n/a"]).all()
    html = out["report"].read_text()
    assert html.count("<img") == 2 and "by tier" in html
    names = {a.path for a in MlflowClient().list_artifacts(out["run_id"])}
    assert {"campaign_report.html", "by_offer.json"} <= names


def test_cli_rejects_an_unknown_campaign(settings, pipeline):
    from typer.testing import CliRunner

    from cli.main import app

    res = CliRunner().invoke(app, cli_args(settings, "evaluate", "campaign", "--campaign", "NOPE"))
    assert res.exit_code == 2 and "campaign 'NOPE' not found" in res.output
