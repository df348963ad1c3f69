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


def test_the_churn_list_is_scored_a_slice_of_members_at_a_time_with_the_same_answers(settings, trained, monkeypatch):
    """The client converts and scores a slice of members at a time (bounded frame and SHAP
    matrix); the list is the one a single pass over every member gives, drivers included."""
    import training.distributed as distributed

    whole = distributed.churn_scores(settings, "local", drivers=True)  # one slice: fewer members than a slice
    sizes = []
    score = distributed._churn_partition

    def counted(model, drivers, frame):
        sizes.append(len(frame))
        return score(model, drivers, frame)

    monkeypatch.setattr(distributed, "SCORE_CHUNK_MEMBERS", 700)
    monkeypatch.setattr(distributed, "_churn_partition", counted)
    sliced = distributed.churn_scores(settings, "local", drivers=True)
    assert len(sizes) > 2 and max(sizes) == 700 and sum(sizes) == len(whole)
    pd.testing.assert_frame_equal(sliced, whole)


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


def test_bulk_latest_snapshot_read_equals_feasts_point_in_time_join(settings, trained):
    """Batch scoring's bulk read returns exactly what Feast's point-in-time join returns for the
    same members at one time, at the dataset's end and at an earlier snapshot."""
    from features.store import latest_features
    from training.datasets import context, with_features

    ctx = context(settings)
    for as_of in (pd.Timestamp(ctx.end), pd.Timestamp(ctx.cutoff) - pd.Timedelta(days=3)):
        as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of
        bulk = latest_features(settings, ctx.store, "churn_v1", as_of).sort_values("member_id")
        ids = bulk["member_id"].sample(300, random_state=1).sort_values()
        feast = with_features(ctx, pd.DataFrame({"member_id": ids, "event_timestamp": as_of}), "churn_v1")
        feast = feast.drop(columns="event_timestamp").sort_values("member_id").reset_index(drop=True)
        mine = bulk[bulk["member_id"].isin(ids)].reset_index(drop=True)[feast.columns]
        assert len(mine) == 300
        pd.testing.assert_frame_equal(mine, feast, check_dtype=False)


def test_churn_list_equals_the_explained_answer(trained, settings):
    """The batch list's arrays give the service's probability, band, action and top driver."""
    from features.store import latest_features
    from kernel.constants import CHAMPION
    from kernel.model_store import load_estimator
    from training.datasets import context
    from training.tracking import configure

    ctx = context(settings)
    frame = latest_features(settings, ctx.store, "churn_v1", pd.Timestamp(ctx.end).tz_localize("UTC")).head(500)
    configure(settings)
    model = load_estimator(settings.model_name("churn"), CHAMPION)
    listed = model.churn_list(frame, drivers=True)
    explained = model.explain(frame, top=1)
    np.testing.assert_allclose(listed["churn_probability"], explained["churn_probability"].astype(float))
    assert (listed["risk_band"] == explained["risk_band"]).all()
    assert (listed["suggested_action"] == explained["suggested_action"]).all()
    top = [d[0]["feature"] if d else None for d in explained["top_drivers"]]
    assert listed["top_driver"].tolist() == top
    assert "top_driver" not in model.churn_list(frame).columns
