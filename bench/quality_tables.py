"""Markdown quality tables (model vs baselines vs oracle) from the latest finished run of each job.

    loyalty-ml [--dataset X] demo          # or: loyalty-ml [--dataset X] train all
    python bench/quality_tables.py [--dataset X] [--metrics ndcg_at_10 recall_at_10 ...]

Reads ``comparison.json`` from the MLflow runs of the active data dir (LOYALTY_DATA_DIR)
and prints one table per job, then a one-line summary: each job's primary metric and the gains
over the untuned library baselines (``cf_ndcg_over_untuned``, ``churn_auc_minus_best_baseline``,
``clv_spearman_minus_best_baseline``).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

warnings.filterwarnings("ignore")

KEY_METRICS = {
    "cf": [
        "precision_at_10",
        "recall_at_10",
        "ndcg_at_10",
        "map_at_10",
        "coverage_at_10",
        "new_recall_at_10",
        "new_ndcg_at_10",
    ],
    "churn": ["roc_auc", "pr_auc", "brier", "lift_top_decile", "mean_prediction", "base_rate"],
    "uplift": [
        "qini",
        "true_qini",
        "uplift_at_10pct",
        "true_uplift_at_10pct",
        "true_uplift_spearman",
        "roc_auc",
        "pr_auc",
    ],
    "clv": ["spearman", "rmse", "mae", "top_decile_value_share"],
    "fraud": ["precision", "recall", "false_positive_rate", "flagged", "fraud_members", "flagged_share"],
}
# job -> (the project's row, its headline metric): compared against every untuned baseline row
HEADLINE = {"churn": ("lightgbm", "roc_auc"), "clv": ("lightgbm_expected_rank", "spearman")}
NOT_BASELINES = {"oracle"}


def gains(tables: dict, logged: dict) -> dict[str, float]:
    """The issue-14 summary: CF NDCG@10 of the chosen model over untuned ALS; churn AUC and CLV
    Spearman minus the best untuned baseline's (default LightGBM, BG/NBD, recency or persistence)."""
    out = {}
    cf = tables.get("cf")
    if cf is not None and "als_untuned" in cf.index and cf.loc["als_untuned", "ndcg_at_10"] > 0:
        out["cf_ndcg_over_untuned"] = logged["cf"]["ndcg_at_10"] / cf.loc["als_untuned", "ndcg_at_10"]
    for job, key in (("churn", "churn_auc_minus_best_baseline"), ("clv", "clv_spearman_minus_best_baseline")):
        table, (model, metric) = tables.get(job), HEADLINE[job]
        if table is None or model not in table.index:
            continue
        baselines = table.drop(index=[model, *NOT_BASELINES], errors="ignore")[metric].dropna()
        if len(baselines):
            out[key] = table.loc[model, metric] - baselines.max()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=None)
    args = ap.parse_args()
    if args.dataset:
        os.environ["LOYALTY_DATASET"] = args.dataset

    import mlflow
    import pandas as pd

    from kernel.settings import Settings
    from training.jobs import JOBS
    from training.tracking import configure

    settings = Settings()
    configure(settings)
    summary, tables, logged_by_job = [], {}, {}
    for job, metrics in KEY_METRICS.items():
        runs = mlflow.search_runs(
            filter_string=f"tags.job = '{job}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs.empty:
            continue
        run_id = runs.iloc[0]["run_id"]
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="comparison.json")
        table = pd.DataFrame(json.load(open(path))).set_index("model")
        cols = [m for m in metrics if m in table.columns]
        print(f"\n**{job}** ({settings.dataset}, run `{run_id[:8]}`)\n")
        print(table[cols].to_markdown(floatfmt=".4f"))
        logged = {c.split(".", 1)[1]: v for c, v in runs.iloc[0].items() if c.startswith("metrics.")}
        tables[job], logged_by_job[job] = table, logged
        primary = next(
            (m for m in (JOBS[job].metric, f"redeem_{JOBS[job].metric}", "redeem_roc_auc") if m in logged), None
        )
        if primary is not None:  # the registered model's primary metric (CF: the algorithm chosen on validation)
            summary.append(f"{job}:{primary}={logged[primary]:.3f}")
    summary += [f"{k}={v:.3f}" for k, v in gains(tables, logged_by_job).items()]
    print(f"\nSUMMARY quality {settings.dataset}: " + " ".join(summary))


if __name__ == "__main__":
    main()
