"""Points-fraud job: Isolation Forest on member ledger features, thresholded to an FPR budget.

On simulated data (labels known) members are split into fit / calibration / test parts:
the forest fits unsupervised, the threshold is the lowest one keeping the false-positive
rate on calibration members within the budget, and precision/recall/FPR are reported on
the test part. Without labels the threshold flags the budget's share of members.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

from kernel.curated import load_curated
from kernel.settings import Settings
from models.fraud import PointsFraudDetector, ledger_features
from training import plots
from training.datasets import context, known_adjusted_orders
from training.evaluation.metrics import alert_metrics
from training.jobs.common import JobNotApplicable, JobResult, finish, log_metrics
from training.tracking import job_run, log_figure, log_table

METRIC, MARGIN = "recall", 0.0
MAX_FPR = 0.003  # false-positive budget from the programme's fraud policy
LEDGER_COLUMNS = ["member_id", "ts", "kind", "points", "order_id"]  # what the ledger features read


def score_holdout(model: PointsFraudDetector, holdout: pd.DataFrame) -> float:
    """Recall at the model's threshold; a model over the FPR budget scores -1 and never wins."""
    if "is_fraud" not in holdout or not holdout["is_fraud"].any():
        raise ValueError("fraud holdout has no labels: promotion needs labelled members")
    m = alert_metrics(holdout["is_fraud"], model.predict(holdout.drop(columns=["member_id", "is_fraud"]))["flagged"])
    return m["recall"] if m["false_positive_rate"] <= model.max_fpr else -1.0


def run(settings: Settings, max_fpr: float = MAX_FPR, register_model: bool = True) -> JobResult:
    ctx = context(settings)
    ledger = lean_ledger(settings)
    if ledger.empty:
        raise JobNotApplicable(
            f"dataset {settings.dataset!r} has no points ledger: nothing to screen for points farming "
            "(map one, or set `points: derive` in the mapping)"
        )
    known_orders = known_adjusted_orders(settings)
    X = ledger_features(ledger, known_orders, as_of=ctx.end)
    labelled = ctx.simulated
    if labelled:
        truth = ctx.truth("fraud").set_index("member_id")["fraud"]
        y = truth.reindex(X.index).fillna(False).to_numpy(dtype=bool)
    with job_run(settings, "fraud", source="curated points_ledger (no Feast features)", labelled=labelled) as run:
        mlflow.log_params({"max_fpr": max_fpr, "members": len(X), "features": ",".join(X.columns)})
        model = PointsFraudDetector(max_fpr=max_fpr, seed=settings.seed)
        notes: list[str] = []
        if not labelled:
            fit_rows = X
            model.fit(X)
            flagged = model.predict(X)["flagged"]
            metrics = {"flagged": float(flagged.sum()), "flagged_share": float(flagged.mean())}
            notes.append("no fraud labels: the threshold flags the FPR budget's share of members; not registered")
            mlflow.set_tag("note", notes[-1])
            log_metrics(metrics)
            holdout = X.reset_index()
            comparison = pd.DataFrame({"isolation_forest": metrics}).T
            metric_value = float("nan")
        else:
            part = _split(y, settings.seed)
            fit_rows = X[part == 0]
            model.fit(fit_rows)
            model.calibrate(X[part == 1], y[part == 1])
            test = part == 2
            scores = model.score(X[test])
            metrics = alert_metrics(y[test], scores > model.threshold_)
            metrics["roc_auc"] = float(roc_auc_score(y[test], scores))
            # baseline rule: any adjustment against an order id that does not exist
            rule = X["unmatched_order_adjusts"].to_numpy()[test] > 0
            baseline = alert_metrics(y[test], rule)
            log_metrics(metrics)
            log_metrics(baseline, "baseline_unmatched_rule_")
            comparison = pd.DataFrame({"isolation_forest": metrics, "unmatched_order_rule": baseline}).T
            if not rule.any():
                notes.append(
                    "the unmatched_order_rule baseline flags nobody here: no points adjustment in the test members"
                    " names an order that does not exist (its zeros are that, not a broken rule)"
                )
            log_figure(
                plots.histogram(
                    {"legitimate": scores[~y[test]], "fraud": scores[y[test]]}, model.threshold_, "anomaly score"
                ),
                "plots/score_distribution.png",
            )
            holdout = X[test].assign(is_fraud=y[test]).reset_index()
            metric_value = metrics[METRIC]
        mlflow.log_metric("threshold", model.threshold_)
        if labelled:
            mlflow.log_params(model.calibration_)
        log_table(comparison.reset_index(names="model"), "comparison.json")
        example = X.head(5).reset_index()
        decision = finish(
            settings,
            "fraud",
            model,
            "fraud",
            example,
            METRIC,
            metric_value,
            holdout,
            register_model and labelled,
            train=fit_rows.reset_index(),
        )
        return JobResult("fraud", run.info.run_id, metrics, comparison, decision, notes)


def lean_ledger(settings: Settings) -> pd.DataFrame:
    """The ledger columns the features read, held lean: ``kind`` categorical and ``order_id``
    only on adjustments (the one kind whose order the features check), so the 25M earn and burn
    rows of a million members do not each hold an order id string."""
    path = settings.curated_dir / "points_ledger.parquet"
    if not path.exists():
        return load_curated(settings, "points_ledger", columns=LEDGER_COLUMNS)  # its error names the step
    table = pq.read_table(path, columns=LEDGER_COLUMNS, read_dictionary=["kind"])
    adjust = pc.equal(table["kind"].cast(pa.string()), "adjust")
    order_id = pc.if_else(adjust, table["order_id"], pa.scalar(None, table.schema.field("order_id").type))
    return table.set_column(table.schema.get_field_index("order_id"), "order_id", order_id).to_pandas()


def _split(y: np.ndarray, seed: int) -> np.ndarray:
    """0 = fit, 1 = calibrate, 2 = test (40/30/30), stratified by label."""
    rng = np.random.default_rng(seed)
    part = np.zeros(len(y), dtype=int)
    for label in (False, True):
        idx = rng.permutation(np.nonzero(y == label)[0])
        part[idx[int(0.4 * len(idx)) : int(0.7 * len(idx))]] = 1
        part[idx[int(0.7 * len(idx)) :]] = 2
    return part
