"""Training jobs on the simulated pipeline: metric sanity against baselines and the oracle,
MLflow logging, the registry's promotion gate and its all-or-nothing registration."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from kernel.constants import CHURN_SNAPSHOT_DECAY
from tests.conftest import cli_args
from training.registry import CHALLENGER, CHAMPION, alias_version, history, load_holdout, promote
from training.tracking import configure


def test_churn_is_calibrated_and_close_to_the_oracle(trained):
    res = trained["churn"].comparison
    model, oracle, recency = res.loc["lightgbm"], res.loc["oracle"], res.loc["recency_only"]
    assert model["roc_auc"] > 0.85
    assert oracle["roc_auc"] - model["roc_auc"] < 0.06  # stated distance to the true-hazard ceiling
    assert model["roc_auc"] <= oracle["roc_auc"] + 0.005
    assert abs(model["mean_prediction"] - model["base_rate"]) < 0.03  # calibrated on average
    assert model["brier"] < recency["brier"] and model["brier"] < 0.2
    metrics = trained["churn"].metrics
    assert metrics["ece"] < 0.05 and metrics["trees"] >= 1


def test_churn_run_logs_the_calibration_it_chose(settings, trained):
    configure(settings)
    run = MlflowClient().get_run(trained["churn"].run_id)
    method = run.data.params["calibration_method"]
    briers = {k.removeprefix("calibration_cv_brier_"): v for k, v in run.data.metrics.items() if "cv_brier" in k}
    assert set(briers) == {"platt", "beta", "isotonic"}
    assert briers[method] == min(briers.values())
    # the snapshots it was trained on were weighted by age, and the run says how
    assert float(run.data.params["snapshot_decay"]) == CHURN_SNAPSHOT_DECAY
    assert int(run.data.params["training_snapshots"]) > 1


def test_cf_beats_popularity_and_stays_below_the_oracle(trained):
    res = trained["cf"].comparison
    chosen = trained["cf"].metrics
    for metric in ("recall_at_10", "ndcg_at_10", "new_recall_at_10", "precision_at_5"):
        assert chosen[metric] > 1.3 * res.loc["popularity", metric], metric
    assert chosen["ndcg_at_10"] < res.loc["oracle", "ndcg_at_10"] + 0.02
    for algo in ("als", "bpr", "item_item", "two_stage"):
        assert res.loc[algo, "recall_at_10"] > res.loc["popularity", "recall_at_10"], algo
    assert chosen["coverage_at_10"] > 5 * res.loc["popularity", "coverage_at_10"]
    # the untuned library baseline and buy-again are rows; the model chosen on validation beats them on test
    assert chosen["ndcg_at_10"] > res.loc["als_untuned", "ndcg_at_10"]
    assert chosen["ndcg_at_10"] > res.loc["buy_again", "ndcg_at_10"]


def test_cf_tuning_logs_its_time_and_keeps_the_defaults_unless_beaten(settings, trained):
    configure(settings)
    run = MlflowClient().get_run(trained["cf"].run_id)
    for algo in ("als", "bpr", "item_item"):
        assert run.data.metrics[f"tuning_seconds_{algo}"] > 0
        # tuning never keeps a candidate that does worse on validation than the defaults
        tuned = run.data.params[f"tuned_{algo}"] == "True"
        assert tuned or any(f"{algo}: tuning did not beat" in n for n in trained["cf"].notes), algo
    assert float(run.data.params["tuning_budget_s"]) == settings.cf_tuning_budget_s


def test_cf_chooses_on_a_member_sample_and_serves_every_member(settings, trained):
    """Past ``cf_selection_members`` the candidates compete on a hash sample; the chosen one is
    refitted on everyone, so a member outside the sample is known, not folded in."""
    from training.jobs import cf

    small = settings.model_copy(update={"cf_selection_members": 1000, "cf_tuning_budget_s": 1.0})
    result = cf.run(small, algorithms=("item_item",), trials=1, register_model=False, two_stage=False)
    configure(settings)
    params = MlflowClient().get_run(result.run_id).data.params
    everyone, sampled = int(params["train_members"]), int(params["selection_members"])
    assert 800 < sampled < 1200 < everyone
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model").unwrap_python_model().estimator
    assert len(model.member_index_) == everyone
    refitted = [name for name in result.comparison.index if name.endswith("(every member)")]
    assert refitted and result.metrics == result.comparison.loc[refitted[0]].dropna().to_dict()
    assert any("refitted on" in note for note in result.notes)


def test_the_offer_job_trains_on_the_members_sample_as_churn_does(settings, pipeline):
    from training.datasets import sampled_members
    from training.jobs import uplift

    small = settings.model_copy(update={"training_max_members": 1000})
    result = uplift.run(small, learner="t", register_model=False)
    configure(settings)
    run = MlflowClient().get_run(result.run_id)
    exposed = pd.read_parquet(settings.curated_dir / "exposures.parquet", columns=["member_id"])["member_id"]
    expected = exposed[sampled_members(exposed, 1000, settings.seed)].nunique()  # the churn job's members
    assert int(run.data.params["training_members"]) == expected < 1200 < exposed.nunique()
    assert f"hash sample of {expected:,} members" in run.data.tags["data_used"]
    # the registered model is refitted on every row; its holdout twin is what the metrics describe
    params = run.data.params
    assert int(params["refit_rows"]) == int(params["train_rows"]) + int(params["test_rows"])
    twin = uplift.gate_view(result.model)
    assert twin is not result.model and type(twin) is type(result.model)
    holdout = load_holdout(settings, run.data.tags["holdout"])
    assert uplift.score_holdout(result.model, holdout) == pytest.approx(result.metrics["qini"], abs=1e-12)
    features = uplift.features_only(holdout)
    assert not np.allclose(result.model.predict(features)["uplift"], twin.predict(features)["uplift"])


def test_uplift_ranks_better_than_propensity_where_the_simulator_makes_them_differ(settings, trained):
    res = trained["uplift"].comparison
    configure(settings)
    run = MlflowClient().get_run(trained["uplift"].run_id)
    learner = run.data.params["learner"]
    path = MlflowClient().download_artifacts(run.info.run_id, "learner_validation.json")
    validation = pd.DataFrame(json.loads(Path(path).read_text()))
    assert set(validation["learner"]) == {"t", "x", "dr", "r"}  # "auto" tried every learner
    # the T-learner unless another one leads it on validation by more than 1.645 standard errors
    clear = validation[validation["lead_over_default"] > 1.645 * validation["lead_se"]]
    assert learner == ("t" if clear.empty else clear.set_index("learner")["validation_qini"].idxmax())
    assert validation["lead_se"].dropna().gt(0).all() and validation["lead_se"].isna().sum() == 1  # the T row
    ours, prop = res.loc[f"{learner}-learner uplift"], res.loc["propensity only"]
    oracle = res.loc["oracle (true uplift)"]
    assert ours["true_qini"] > prop["true_qini"]  # Qini on the true effects: no sampling noise
    assert ours["true_uplift_spearman"] > prop["true_uplift_spearman"]
    assert ours["qini"] > res.loc["random", "qini"]
    assert oracle["true_qini"] > ours["true_qini"]
    assert 0.6 < ours["redeem_roc_auc"] <= 1.0


def test_clv_beats_persistence(trained):
    res = trained["clv"].comparison
    assert res.loc["lightgbm_expected_rank", "spearman"] > res.loc["persistence", "spearman"]
    assert res.loc["lightgbm_expected_rank", "rmse"] < res.loc["persistence", "rmse"]


def test_fraud_keeps_the_false_positive_budget(trained):
    m = trained["fraud"].metrics
    assert m["false_positive_rate"] <= 0.003
    assert m["recall"] >= 0.5 and m["fraud_members"] >= 3


def test_every_job_is_logged_with_lineage_plots_and_a_loadable_model(settings, trained):
    configure(settings)
    client = MlflowClient()
    plots = {
        "churn": {"plots/roc.png", "plots/calibration.png", "plots/lift_gain.png", "plots/feature_importance.png"},
        "cf": {"plots/precision_at_k.png", "plots/ndcg_at_k.png"},
        "uplift": {"plots/qini.png"},
        "clv": {"plots/feature_importance.png"},
        "fraud": {"plots/score_distribution.png"},
    }
    for job, res in trained.items():
        run = client.get_run(res.run_id)
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["git_sha"] and len(tags["dataset_fingerprint"]) == 16 and tags["holdout"]
        assert tags["registered_model"] == settings.model_name(job)
        names = {a.path for a in client.list_artifacts(res.run_id, "plots")}
        assert plots[job] <= names, (job, names)
        assert run.data.metrics, job
        model = mlflow.pyfunc.load_model(f"models:/{settings.model_name(job)}@{CHAMPION}")
        assert model.metadata.signature is not None
        example = model.input_example
        assert example is not None and len(model.predict(example)) == len(example)
    features = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=trained["churn"].run_id, artifact_path="features.json")
        ).read_text()
    )
    assert features["feature_service"] == "churn_v1" and "member_rfm:recency_days" in features["features"]


def test_the_mlflow_ui_opens_on_training_runs_with_their_datasets(settings, trained):
    from training.registry import AUDIT_EXPERIMENT

    configure(settings)
    client = MlflowClient()
    for name in (settings.experiment_name, AUDIT_EXPERIMENT):
        exp = client.get_experiment_by_name(name)
        assert exp.tags.get("mlflow.experimentKind") == "custom_model_development", name
        # artifacts under the profile's artifact root (.loyalty/), never ./mlruns in the checkout
        assert exp.artifact_location.startswith(settings.artifact_root), (name, exp.artifact_location)
    for job, res in trained.items():
        inputs = client.get_run(res.run_id).inputs.dataset_inputs
        contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context") for i in inputs}
        assert contexts == {"training", "holdout"}, job
        for i in inputs:
            assert "member_id" not in i.dataset.schema, job  # the schema, never the ids
    tags = client.get_run(trained["cf"].run_id).data.tags
    assert tags["feature_service"] == "member_online_v1"


def test_run_artifacts_carry_no_member_ids(settings, trained):
    from kernel.curated import load_curated

    members = set(load_curated(settings, "members")["member_id"].head(200))
    for res in trained.values():
        root = Path(mlflow.artifacts.download_artifacts(run_id=res.run_id))
        text = " ".join(
            p.read_text(errors="ignore")
            for p in root.rglob("*")
            if p.suffix in {".json", ".txt", ".yaml", ""} and p.is_file()
        )
        assert not any(m in text for m in members)


def test_churn_explanations_carry_band_drivers_and_action(settings, trained):
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name('churn')}@{CHAMPION}")
    out = model.predict(model.input_example)
    assert set(out.columns) >= {"churn_probability", "risk_band", "suggested_action", "top_drivers"}
    assert out["risk_band"].isin(["low", "medium", "high", "critical"]).all()
    drivers = json.loads(out["top_drivers"].iloc[0])
    assert all({"feature", "value", "contribution"} <= set(d) for d in drivers)


def test_promotion_refuses_a_worse_challenger_and_audits_it(settings, trained):
    from training.jobs import churn

    configure(settings)
    client = MlflowClient()
    name = settings.model_name("churn")
    champion = alias_version(client, name, CHAMPION)
    weak = churn.run(settings, params={"n_estimators": 2, "num_leaves": 2, "colsample_bytree": 0.1}, linear_weight=0)
    assert weak.decision.action == "registered" and alias_version(client, name, CHALLENGER) == weak.decision.version
    decision = promote(settings, "churn")
    assert decision.action == "refused"
    assert decision.challenger_score < decision.champion_score
    assert alias_version(client, name, CHAMPION) == champion  # nothing moved
    # an equally good challenger clears a zero margin; aliases move and the old one is retired
    again = churn.run(settings)
    decision = promote(settings, "churn", margin=-1.0)
    assert decision.action == "promoted" and alias_version(client, name, CHAMPION) == again.decision.version
    assert alias_version(client, name, CHALLENGER) is None
    assert client.get_model_version(name, champion).tags["retired_at"]
    audit = history(settings, "churn")
    assert list(audit["action"])[-3:] == ["refused", "registered", "promoted"]
    assert {"actor", "challenger_score", "champion_score", "margin", "at"} <= set(audit.columns)


def test_the_offer_gate_lets_a_challenger_trail_by_its_noise_and_audits_how_much(settings, trained):
    from training.jobs import uplift

    configure(settings)
    client = MlflowClient()
    name = settings.model_name("uplift")
    champion = alias_version(client, name, CHAMPION)
    other = uplift.run(settings, learner="t", params={"n_estimators": 30, "num_leaves": 2})
    try:
        # a margin no Qini can reach: refused, but the gap's noise was measured and recorded
        strict = promote(settings, "uplift", margin=1.0)
        assert strict.action == "refused" and strict.tolerance_se == pytest.approx(uplift.TOLERANCE_SE)
        assert strict.gap_se > 0 and f"SE {strict.gap_se:.4f}" in strict.reason
        # the default gate: promoted exactly when the challenger is within 1.645 SE of the champion
        decision = promote(settings, "uplift")
        bar = decision.champion_score - uplift.TOLERANCE_SE * decision.gap_se
        assert decision.gap_se == pytest.approx(strict.gap_se)  # the same seeded resamples
        assert (decision.action == "promoted") == (decision.challenger_score >= bar)
        audit = history(settings, "uplift")
        assert audit["gap_se"].iloc[-1] == pytest.approx(decision.gap_se)
        assert float(audit["tolerance_se"].iloc[-1]) == pytest.approx(uplift.TOLERANCE_SE)
    finally:  # later tests serve the first champion
        client.set_registered_model_alias(name, CHAMPION, champion)
        if alias_version(client, name, CHALLENGER) == other.decision.version:
            client.delete_registered_model_alias(name, CHALLENGER)


def test_a_failed_or_interrupted_job_registers_nothing(settings, trained, monkeypatch):
    from training import plots, registry
    from training.jobs import clv

    configure(settings)
    client = MlflowClient()
    name = settings.model_name("clv")
    before = {v.version for v in client.search_model_versions(f"name='{name}'")}
    champion = alias_version(client, name, CHAMPION)

    def broken(*a, **k):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots, "importance", broken)
    with pytest.raises(RuntimeError):
        clv.run(settings)
    monkeypatch.undo()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "audit", interrupted)  # dies after the version and alias exist
    with pytest.raises(KeyboardInterrupt):
        clv.run(settings)
    monkeypatch.undo()
    after = {v.version for v in client.search_model_versions(f"name='{name}'")}
    assert after == before and alias_version(client, name, CHAMPION) == champion
    assert alias_version(client, name, CHALLENGER) is None
    runs = mlflow.search_runs(filter_string="tags.job = 'clv'", order_by=["attributes.start_time DESC"], max_results=2)
    assert set(runs["status"]) <= {"FAILED", "KILLED"}


def test_ctrl_c_to_a_real_training_process_leaves_the_registry_as_it_was(settings, trained, tmp_path):
    """SIGINT to ``loyalty-ml train churn`` while it runs (features, fit or registration):
    the process stops, its run is marked failed/killed, no version appears, aliases stand."""
    import os
    import signal
    import subprocess
    import sys
    import time

    configure(settings)
    client = MlflowClient()
    name = settings.model_name("churn")
    before = {v.version for v in client.search_model_versions(f"name='{name}'")}
    champion = alias_version(client, name, CHAMPION)
    started_runs = len(mlflow.search_runs(filter_string="tags.job = 'churn'"))
    log = (tmp_path / "train.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "train", "churn"],
        env={**os.environ, "LOYALTY_DATA_DIR": str(settings.data_dir)},
        stdout=log,
        stderr=subprocess.STDOUT,
        # as from a terminal: a suite started in the background (nohup ... &) ignores SIGINT, and a
        # child would inherit that and never see the Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while len(mlflow.search_runs(filter_string="tags.job = 'churn'")) == started_runs:  # its run has begun
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "train.log").read_text()[-2000:]
        time.sleep(0.2)
    time.sleep(1.0)  # into the job
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) != 0
    after = {v.version for v in client.search_model_versions(f"name='{name}'")}
    assert after == before and alias_version(client, name, CHAMPION) == champion
    latest = mlflow.search_runs(filter_string="tags.job = 'churn'", order_by=["attributes.start_time DESC"])
    assert latest["status"].iloc[0] in {"FAILED", "KILLED"}


def test_cli_train_and_models_commands(settings, trained):
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, cli_args(settings, "models", "list"))
    assert res.exit_code == 0 and settings.model_name("uplift") in res.output
    res = runner.invoke(app, cli_args(settings, "models", "promote", "nonsense"))
    assert res.exit_code == 2 and "job must be one of" in res.output
    res = runner.invoke(app, cli_args(settings, "models", "promote", "uplift", "--tolerance-se", "-1"))
    assert res.exit_code == 2 and "--tolerance-se" in res.output
    res = runner.invoke(app, cli_args(settings, "models", "history", "churn"))
    assert res.exit_code == 0 and "bootstrapped" in res.output
    res = runner.invoke(app, cli_args(settings, "train", "fraud"))
    assert res.exit_code == 0, res.output
    assert "false_positive_rate" in res.output


def test_cf_model_serves_known_fold_in_and_cold_members(settings, trained):
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name('cf')}@{CHAMPION}").unwrap_python_model().estimator
    known = next(iter(model.member_index_))
    owned = set(model.items_[model.owned_[model.member_index_[known]].indices])
    out = model.recommend(
        [known, "NEW-1", "NEW-2"], k=5, histories={"NEW-1": sorted(owned)[:3]}, segments={"NEW-2": "Gold"}
    )
    assert list(out["source"]) == [
        "two_stage" if model.algorithm == "two_stage" else "cf",
        "cf_fold_in" if model.algorithm != "bpr" else "segment_popularity",
        "segment_popularity",
    ]
    assert not set(out["item_ids"][0]) & owned
    assert all(len(x) == 5 for x in out["item_ids"])
    assert np.all(np.diff(out["scores"][0]) <= 1e-9)  # ranked
    assert isinstance(trained["cf"].comparison, pd.DataFrame)


@pytest.mark.unit
def test_training_sample_keeps_whole_members_the_same_ones_every_time():
    from training.datasets import sampled_members

    ids = np.repeat([f"M{i:07d}" for i in range(50_000)], 3)  # three snapshot rows per member
    keep = sampled_members(ids, 10_000, seed=7)
    per_member = keep.reshape(-1, 3)
    assert (per_member.all(axis=1) == per_member.any(axis=1)).all()  # a member's rows are never split
    assert 9_500 <= per_member[:, 0].sum() <= 10_500
    assert (sampled_members(ids[::-1], 10_000, seed=7) == keep[::-1]).all()  # by id, not by position
    assert (sampled_members(ids, 10_000, seed=8) != keep).any()
    assert sampled_members(ids, 50_000, seed=7).all()  # no more members than the cap: all kept


@pytest.mark.unit
def test_order_totals_and_adjusted_orders_are_read_from_parquet_as_pandas_would_compute_them(tmp_path):
    from kernel.curated import order_totals
    from kernel.settings import Settings
    from training.datasets import known_adjusted_orders, orders

    settings = Settings(data_dir=tmp_path, dataset="shop")
    settings.curated_dir.mkdir(parents=True)
    ts = pd.to_datetime(
        [
            "2024-01-02 10:00",
            "2024-01-02 09:00",
            "2024-01-03 08:00",
            "2024-01-05 08:00",
            "2024-01-06 08:00",
            "2024-01-07 08:00",
        ]
    )
    lines = pd.DataFrame(
        {
            "order_id": ["O2", "O2", "O1", "O3", None, "O4"],
            "member_id": ["B", "B", "A", "A", "A", None],
            "amount": [1.5, 2.25, 10.0, 3.0, 4.0, 5.0],
            "ts": ts,
        }
    )
    lines.to_parquet(settings.curated_dir / "transactions.parquet", index=False)
    expected = order_totals(lines).reset_index(drop=True)  # pandas leaves rows without a key out
    pd.testing.assert_frame_equal(orders(settings), expected)
    assert orders(settings)["order_id"].tolist() == ["O1", "O3", "O2"]  # by member, then order

    ledger = pd.DataFrame(
        {
            "member_id": ["A", "A", "B", "B", "A"],
            "kind": ["adjust", "adjust", "earn", "adjust", "adjust"],
            "order_id": ["O1", "GHOST", "O2", None, "O3"],
        }
    )
    ledger.to_parquet(settings.curated_dir / "points_ledger.parquet", index=False)
    assert known_adjusted_orders(settings).tolist() == ["O1", "O3"]  # named by an adjustment and sold


@pytest.mark.unit
def test_the_sampled_members_orders_are_filtered_inside_duckdb_as_the_pandas_sample_keeps_them(tmp_path):
    from kernel.curated import order_totals
    from kernel.settings import Settings
    from training.datasets import orders, sampled_members

    settings = Settings(data_dir=tmp_path, dataset="shop", seed=11)
    settings.curated_dir.mkdir(parents=True)
    n = 4_000
    lines = pd.DataFrame(
        {
            "member_id": np.repeat([f"M{i:05d}" for i in range(n)], 3),
            "order_id": [f"O{i // 2:06d}" for i in range(3 * n)],  # a member's orders of one or two lines
            "amount": np.arange(3 * n, dtype=float),
            "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(3 * n), unit="min"),
        }
    )
    lines.to_parquet(settings.curated_dir / "transactions.parquet", index=False)
    every = order_totals(lines).reset_index(drop=True)
    expected = every[sampled_members(every["member_id"], 1_000, settings.seed)].reset_index(drop=True)
    sampled = orders(settings, max_members=1_000)
    assert 900 <= sampled["member_id"].nunique() <= 1_100
    pd.testing.assert_frame_equal(sampled, expected)
    pd.testing.assert_frame_equal(orders(settings, max_members=n), every)  # the cap above the programme: all
