"""Scale-out on Dask: a local two-worker cluster trains the churn booster data-parallel and
scores every member; quality and scores must match single-process training and scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import cli_args

AUC_TOLERANCE = 0.01  # data-parallel LightGBM merges per-worker histograms: not bit-identical
BRIER_TOLERANCE = 0.005


@pytest.fixture(scope="module")
def dask_settings(settings):
    return settings.model_copy(update={"dask_workers": 2, "dask_scheduler": None})


def test_local_cluster_has_the_configured_workers(dask_settings):
    from training.distributed import dask_client

    with dask_client(dask_settings) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        # separate processes, not threads of this one
        assert len({w["host"] + str(w.get("pid", i)) for i, w in enumerate(workers.values())}) == 2


def test_distributed_churn_training_matches_single_process_quality(dask_settings, trained):
    from training.jobs import churn

    single = trained["churn"].metrics
    dist = churn.run(dask_settings, engine="dask", register_model=False)
    assert abs(dist.metrics["roc_auc"] - single["roc_auc"]) <= AUC_TOLERANCE
    assert abs(dist.metrics["brier"] - single["brier"]) <= BRIER_TOLERANCE
    assert abs(dist.metrics["mean_prediction"] - single["base_rate"]) < 0.03  # still calibrated
    import mlflow

    run = mlflow.get_run(dist.run_id)
    assert run.data.params["engine"] == "dask" and run.data.params["dask_workers"] == "2"


def test_distributed_batch_scoring_equals_in_process_scoring(dask_settings, trained):
    from training.distributed import churn_scores

    local = churn_scores(dask_settings, "local")
    dist = churn_scores(dask_settings, "dask")
    assert len(local) > 1000 and local["member_id"].is_unique
    pd.testing.assert_frame_equal(local, dist)
    assert np.isfinite(local["churn_probability"]).all()
    assert set(local["risk_band"]) <= {"low", "medium", "high", "critical"}


def test_bad_engine_is_a_clear_error(dask_settings):
    from training.distributed import churn_scores

    with pytest.raises(ValueError, match="engine must be 'local' or 'dask'"):
        churn_scores(dask_settings, "spark")


def test_score_churn_cli_writes_every_member_and_rejects_a_bad_engine(settings, trained, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    out = tmp_path / "scores.parquet"
    res = CliRunner().invoke(app, cli_args(settings, "score-churn", "--out", str(out)))
    assert res.exit_code == 0, res.output
    scores = pd.read_parquet(out)
    assert scores["member_id"].is_unique and len(scores) > 1000
    assert {"churn_probability", "risk_band", "top_driver", "suggested_action"} <= set(scores.columns)
    bad = CliRunner().invoke(app, cli_args(settings, "score-churn", "--engine", "spark", "--out", str(out)))
    assert bad.exit_code == 2 and "engine must be 'local' or 'dask'" in bad.output
