"""Churn job: label = no purchase in the next N days; features as of each cutoff from Feast."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from kernel.constants import CHURN_SNAPSHOT_DECAY, TRAINING_SNAPSHOTS
from kernel.settings import Settings
from models.calibration import expected_calibration_error
from models.churn import ChurnModel
from training import plots
from training.datasets import (
    check_snapshot_decay,
    context,
    cutoff_labels,
    feature_refs,
    orders,
    require_repeat_buyers,
    snapshot_weights,
    with_features,
)
from training.distributed import dask_client
from training.evaluation.baselines import btyd_holdout, untuned_lightgbm
from training.evaluation.metrics import classification_metrics, lift_table
from training.jobs.common import JobResult, finish, log_metrics, model_input
from training.tracking import job_run, log_figure, log_table

SERVICE = "churn_v1"
METRIC, MARGIN = "roc_auc", 0.002
LABELS = ["churned", "spend_next"]


def features_only(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in LABELS if c in frame.columns])


def score_holdout(model: ChurnModel, holdout: pd.DataFrame) -> float:
    return classification_metrics(holdout["churned"], model.predict_proba(features_only(holdout)))[METRIC]


def run(
    settings: Settings,
    n_snapshots: int = TRAINING_SNAPSHOTS,
    calibration: str = "auto",
    params: dict | None = None,
    register_model: bool = True,
    engine: str = "local",
    linear_weight: float | None = None,
    snapshot_decay: float = CHURN_SNAPSHOT_DECAY,
) -> JobResult:
    """``engine="dask"`` trains the booster data-parallel on the configured Dask cluster;
    ``linear_weight``: the smooth linear score's weight (None: the model's default);
    ``snapshot_decay``: each earlier training snapshot's weight relative to the next (1: all alike)."""
    if engine not in ("local", "dask"):
        raise ValueError(f"engine must be 'local' or 'dask', not {engine!r}")
    check_snapshot_decay(snapshot_decay)  # before any run starts or frame is built
    ctx = context(settings)
    order_table = orders(settings, settings.training_max_members)  # the sampled members' orders
    times, train_labels, test_labels = cutoff_labels(ctx, n_snapshots, order_table)
    require_repeat_buyers(train_labels, settings.label_window_days, "training snapshots")
    require_repeat_buyers(test_labels, settings.label_window_days, "holdout window")
    with job_run(settings, "churn", SERVICE, feature_refs(ctx, SERVICE), cutoff=ctx.cutoff.date()) as run:
        mlflow.log_params(
            {
                "label_window_days": settings.label_window_days,
                "training_snapshots": len(times),
                "training_members": train_labels["member_id"].nunique(),
                "training_max_members": settings.training_max_members,
                "train_from": times[0].date(),
                "train_to": times[-1].date(),
                "cutoff": ctx.cutoff.date(),
                "calibration": calibration,
                "engine": engine,
                "snapshot_decay": snapshot_decay,
                **{f"lgbm_{k}": v for k, v in (params or {}).items()},
            }
        )
        train = with_features(ctx, train_labels, SERVICE)
        test = with_features(ctx, test_labels, SERVICE)
        linear = {} if linear_weight is None else {"linear_weight": linear_weight}
        model = ChurnModel(params=params, calibration=calibration, seed=settings.seed, **linear)
        fit_args = (features_only(train), train["churned"].to_numpy(), train["member_id"].to_numpy())
        by_age = snapshot_weights(train["event_timestamp"], snapshot_decay)
        if engine == "dask":
            with dask_client(settings) as client:
                mlflow.log_param("dask_workers", len(client.scheduler_info()["workers"]))
                model.fit(*fit_args, dask_client=client, sample_weight=by_age)
        else:
            model.fit(*fit_args, sample_weight=by_age)
        y = test["churned"].to_numpy()
        p, p_raw = model.predict_proba(features_only(test)), model.predict_raw(features_only(test))
        metrics = classification_metrics(y, p)
        metrics["train_rows"], metrics["uncalibrated_brier"] = float(len(train)), float(np.mean((p_raw - y) ** 2))
        metrics["ece"] = expected_calibration_error(y, p)
        metrics["uncalibrated_ece"] = expected_calibration_error(y, p_raw)
        metrics["trees"] = float(model.n_trees_)
        mlflow.log_params(
            {"calibration_method": model.calibration_method_, "linear_weight": model.linear_weight, **model.complexity_}
        )
        log_metrics({f"calibration_cv_brier_{k}": v for k, v in model.calibration_brier_.items()})
        recency = test["recency_days"].fillna(9999).to_numpy()
        baseline = classification_metrics(y, recency / (recency.max() + 1))  # rank-only baseline: idle days
        # the untuned baselines the project's choices must beat
        p_plain = untuned_lightgbm(
            model.features_, features_only(train), train["churned"], features_only(test), settings.seed, classifier=True
        )
        btyd = btyd_holdout(order_table, ctx.cutoff, settings.label_window_days, test["member_id"])
        p_btyd = btyd["p_no_purchase"].to_numpy()
        rows = {
            "lightgbm": metrics,
            "lightgbm_default": classification_metrics(y, p_plain),
            "bg_nbd": classification_metrics(y, p_btyd),
            "recency_only": baseline,
        }
        curves = {"lightgbm": (y, p), "recency only": (y, recency)}
        if ctx.oracle_comparable:
            truth = ctx.truth("churn").set_index("member_id")["p_no_purchase"]
            p_true = truth.reindex(test["member_id"]).to_numpy()
            rows["oracle"] = classification_metrics(y, p_true)
            curves["oracle (true hazard)"] = (y, p_true)
            metrics["auc_gap_to_oracle"] = rows["oracle"]["roc_auc"] - metrics["roc_auc"]
        log_metrics(metrics)
        log_metrics(baseline, "baseline_recency_")
        log_metrics(rows["lightgbm_default"], "baseline_lgbm_default_")
        log_metrics(rows["bg_nbd"], "baseline_bg_nbd_")
        if "oracle" in rows:
            log_metrics(rows["oracle"], "oracle_")
        comparison = pd.DataFrame(rows).T
        log_table(comparison.reset_index(names="model"), "comparison.json")
        log_table(lift_table(y, p), "lift_table.json")
        bands = model.explain(features_only(test))["risk_band"]
        log_table(pd.crosstab(bands, y, margins=True).reset_index(), "risk_bands.json")
        log_figure(plots.roc(curves), "plots/roc.png")
        log_figure(plots.calibration(y, p, p_raw), "plots/calibration.png")
        log_figure(plots.lift_gain(y, p), "plots/lift_gain.png")
        gain = model.booster_.booster_.feature_importance("gain")
        log_figure(plots.importance(model.features_.columns_, gain), "plots/feature_importance.png")
        if model.linear_ is not None:  # the smooth score's log-odds per standard deviation of each signed-log feature
            names = np.asarray(model.features_.columns_, dtype=object)[model.linear_.columns_]
            coefficients = pd.DataFrame({"feature": names, "log_odds_per_sd": model.linear_.coef_})
            log_table(coefficients.sort_values("log_odds_per_sd", key=abs, ascending=False), "linear_score.json")
        example = model_input(test.head(5), model.features_.columns_)
        decision = finish(
            settings,
            "churn",
            model,
            "churn",
            example,
            METRIC,
            metrics[METRIC],
            test.drop(columns=["spend_next"]),
            register_model,
            train=train.drop(columns=["spend_next"]),
            scores={"churn_probability": p},
        )
        return JobResult("churn", run.info.run_id, metrics, comparison, decision)
