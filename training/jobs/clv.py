"""Value job: expected spend over the label window (ordered by expected rank), 12-month CLV, LoyaltyIndex, RFM."""

from __future__ import annotations

import mlflow
import pandas as pd

from kernel.constants import CHURN_SNAPSHOT_DECAY, TRAINING_SNAPSHOTS
from kernel.settings import Settings
from models.clv import CLVModel
from training import plots
from training.datasets import (
    context,
    cutoff_labels,
    feature_refs,
    orders,
    require_repeat_buyers,
    snapshot_weights,
    with_features,
)
from training.evaluation.baselines import btyd_holdout, untuned_lightgbm
from training.evaluation.metrics import value_metrics
from training.jobs.churn import features_only
from training.jobs.common import JobResult, finish, log_metrics, model_input
from training.tracking import job_run, log_figure, log_table

SERVICE = "churn_v1"  # the same member state drives both risk and value
METRIC, MARGIN = "spearman", 0.002


def score_holdout(model: CLVModel, holdout: pd.DataFrame) -> float:
    return value_metrics(holdout["spend_next"], model.predict(features_only(holdout)))[METRIC]


def run(
    settings: Settings, n_snapshots: int = TRAINING_SNAPSHOTS, params: dict | None = None, register_model: bool = True
) -> JobResult:
    ctx = context(settings)
    order_table = orders(settings, settings.training_max_members)  # the sampled members' orders
    times, train_labels, test_labels = cutoff_labels(ctx, n_snapshots, order_table)
    require_repeat_buyers(train_labels, settings.label_window_days, "training snapshots", need_churners=False)
    require_repeat_buyers(test_labels, settings.label_window_days, "holdout window", need_churners=False)
    with job_run(settings, "clv", SERVICE, feature_refs(ctx, SERVICE), cutoff=ctx.cutoff.date()) as run:
        mlflow.log_params(
            {
                "horizon_days": settings.label_window_days,
                "training_snapshots": len(times),
                "training_members": train_labels["member_id"].nunique(),
                "training_max_members": settings.training_max_members,
                "cutoff": ctx.cutoff.date(),
                "objective": "expected rank of spend (P(buy) x buyer quantile), isotonic map to currency",
                "snapshot_decay": CHURN_SNAPSHOT_DECAY,
                "annualisation": "horizon value x 365 / horizon_days",
            }
        )
        train = with_features(ctx, train_labels, SERVICE)
        test = with_features(ctx, test_labels, SERVICE)
        model = CLVModel(horizon_days=settings.label_window_days, params=params, seed=settings.seed)
        model.fit(
            features_only(train),
            train["spend_next"].to_numpy(),
            train["member_id"].to_numpy(),
            snapshots=train["event_timestamp"].to_numpy(),
            # P(buy) weighs the training snapshots as churn does (the same label, less its calibration)
            sample_weight=snapshot_weights(train["event_timestamp"], CHURN_SNAPSHOT_DECAY),
        )
        mlflow.log_params(model.complexity_)
        actual = test["spend_next"].to_numpy()
        metrics = value_metrics(actual, model.predict(features_only(test))) | {"trees": float(model.n_trees_)}
        # persistence baseline: the last 90 days' spend, rescaled to the horizon
        persistence = test["monetary_90d"].fillna(0).to_numpy() * settings.label_window_days / 90.0
        baseline = value_metrics(actual, persistence)
        # the untuned baselines the project's choices must beat
        btyd = btyd_holdout(order_table, ctx.cutoff, settings.label_window_days, test["member_id"])
        btyd_value = value_metrics(actual, btyd["expected_spend"].to_numpy())
        plain = untuned_lightgbm(
            model.features_,
            features_only(train),
            train["spend_next"],
            features_only(test),
            settings.seed,
            classifier=False,
        )
        plain_value = value_metrics(actual, plain)
        log_metrics(metrics)
        log_metrics(baseline, "baseline_persistence_")
        log_metrics(btyd_value, "baseline_bg_nbd_gamma_gamma_")
        log_metrics(plain_value, "baseline_lgbm_default_")
        comparison = pd.DataFrame(
            {
                "lightgbm_expected_rank": metrics,
                "lightgbm_default": plain_value,
                "bg_nbd_gamma_gamma": btyd_value,
                "persistence": baseline,
            }
        ).T
        log_table(comparison.reset_index(names="model"), "comparison.json")
        values = model.value(features_only(test))
        seg = values.groupby("rfm_segment").agg(
            members=("clv_12m", "size"), mean_clv_12m=("clv_12m", "mean"), mean_loyalty_index=("loyalty_index", "mean")
        )
        seg["actual_spend_next_mean"] = pd.Series(actual, index=values.index).groupby(values["rfm_segment"]).mean()
        log_table(seg.reset_index(), "rfm_segments.json")
        log_figure(plots.importance(model.features_.columns_, model.feature_gain_), "plots/feature_importance.png")
        decision = finish(
            settings,
            "clv",
            model,
            "clv",
            model_input(
                test.head(5), model.features_.columns_ + ["recency_days", "frequency_365d", "monetary_365d", "aov_365d"]
            ),
            METRIC,
            metrics[METRIC],
            test.drop(columns=["churned"]),
            register_model,
            train=train.drop(columns=["churned"]),
        )
        return JobResult("clv", run.info.run_id, metrics, comparison, decision)
