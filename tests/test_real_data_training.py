"""Training jobs on the public data sets, run through the CLI in a separate process (the Feast
repo binds one dataset per process). Skipped when ../shared/data is absent."""

from __future__ import annotations

from pathlib import Path

import mlflow

from kernel.settings import Settings
from tests.conftest import run_cli
from training.tracking import configure


def _cli(data_dir: Path, dataset: str, *args: str, timeout: int = 600) -> str:
    env = {"LOYALTY_DATA_DIR": str(data_dir), "LOYALTY_DATASET": dataset, "LOYALTY_TUNING_TRIALS": "2"}
    return run_cli(env, *args, timeout=timeout)


def _prepare(data_dir: Path, dataset: str) -> None:
    for step in (["data", "load"], ["data", "validate"], ["features", "build"], ["features", "apply"]):
        _cli(data_dir, dataset, *step)


def _latest_metrics(data_dir: Path, dataset: str, job: str) -> dict[str, float]:
    configure(Settings(data_dir=data_dir, dataset=dataset))
    runs = mlflow.search_runs(
        filter_string=f"tags.job = '{job}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return {c.split(".", 1)[1]: v for c, v in runs.iloc[0].items() if c.startswith("metrics.")}


def test_complete_journey_offer_propensity_without_control_group(shared_data, tmp_path):
    _prepare(tmp_path, "complete_journey")
    out = _cli(tmp_path, "complete_journey", "train", "uplift")
    assert "no control group" in out and "roc_auc" in out
    assert "registered loyalty-complete_journey-uplift v1" in out
    m = _latest_metrics(tmp_path, "complete_journey", "uplift")
    assert m["redeem_roc_auc"] > 0.6 and "qini" not in m  # no uplift claimed without a control group


def test_online_retail_cf_and_churn(shared_data, tmp_path):
    _prepare(tmp_path, "online_retail")
    out = _cli(tmp_path, "online_retail", "train", "cf", "--algorithm", "als", "--algorithm", "item_item")
    assert "popularity" in out and "oracle" not in out  # no ground truth on real data
    out = _cli(tmp_path, "online_retail", "train", "churn")
    assert "recency_only" in out and "registered loyalty-online_retail-churn v1" in out
    cf = _latest_metrics(tmp_path, "online_retail", "cf")
    assert cf["ndcg_at_10"] > 1.2 * cf["popularity_ndcg_at_10"] and cf["members_evaluated"] > 500
    churn = _latest_metrics(tmp_path, "online_retail", "churn")
    assert churn["roc_auc"] > 0.7 and churn["roc_auc"] >= churn["baseline_recency_roc_auc"] - 0.02
