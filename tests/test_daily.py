"""The living programme: the simulated world continued by the service's own sends, and
``loyalty-ml daily`` run day after day on it (idempotent, resumable after a kill, drift in MLflow)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from cli.daily import DayError, Journal, parse_cadence, parse_day, retrain_due
from kernel.constants import SERVICE_CAMPAIGN
from kernel.settings import Profile, Settings
from tests.conftest import Load, Service, cli_args, run_cli, run_cli_process
from training.drift import drift_report, feature_psi, reference_profile
from training.jobs.uplift import LOGGED_HOLDOUT_SHARE, MAX_WEIGHT, MIN_LOGGED_FOR_HOLDOUT, ipw_weights, split_logged

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- pure logic
@pytest.mark.unit
def test_psi_is_near_zero_on_the_same_population_and_flags_a_shift():
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"spend": rng.gamma(2, 50, 20_000), "tier": rng.choice(["Regular", "Gold"], 20_000)})
    profile = reference_profile(train)
    same = pd.DataFrame({"spend": rng.gamma(2, 50, 5_000), "tier": rng.choice(["Regular", "Gold"], 5_000)})
    assert feature_psi(profile["spend"], same["spend"]) < 0.02
    assert feature_psi(profile["tier"], same["tier"]) < 0.01
    shifted = same.assign(spend=same["spend"] * 2, tier="Platinum")  # a category never seen in training
    report = drift_report(profile, shifted, warning=0.25)
    assert set(report.loc[report["status"] == "warning", "feature"]) == {"spend", "tier"}
    # missing values are a bin of their own: a feed that stops filling a column is drift too
    assert feature_psi(profile["spend"], pd.Series([np.nan] * 1000)) > 0.25
    assert json.loads(json.dumps(profile)) == profile  # stored as an MLflow artifact


@pytest.mark.unit
def test_cadence_day_and_retrain_rules():
    assert parse_cadence("7d") == 7 and parse_cadence("never") == 0
    for bad in ("7", "0d", "weekly"):
        with pytest.raises(DayError, match="--retrain-every"):
            parse_cadence(bad)
    with pytest.raises(DayError, match="--as-of"):
        parse_day("yesterday-ish")
    day = parse_day("2025-07-01T13:45")
    assert day == pd.Timestamp("2025-07-01")
    assert retrain_due(None, day, 7) and not retrain_due(None, day, 0)
    assert not retrain_due("2025-06-26", day, 7) and retrain_due("2025-06-24", day, 7)


@pytest.mark.unit
def test_logged_exposures_are_weighted_by_inverse_propensity_per_arm():
    frame = pd.DataFrame(
        {
            "campaign_id": ["CMP1", "CMP1", SERVICE_CAMPAIGN, SERVICE_CAMPAIGN, SERVICE_CAMPAIGN, SERVICE_CAMPAIGN],
            "treatment": [True, False, True, True, True, False],
            "propensity": [0.35, 0.15, 0.9, 0.09, 0.001, 0.05],
        }
    )
    w = ipw_weights(frame)
    assert w[:2].tolist() == [1.0, 1.0]  # randomised rows keep their weight
    treated = w[2:5]
    assert treated.mean() == pytest.approx(1.0)
    raw = np.array([1 / 0.9, 1 / 0.09, MAX_WEIGHT])  # 1/0.001 is clipped
    assert treated == pytest.approx(raw / raw.mean())
    assert w[5] == pytest.approx(1.0)  # a control arm of one row


@pytest.mark.unit
def test_the_latest_logged_exposures_are_held_out_once_there_are_enough():
    def logged(n: int) -> pd.DataFrame:
        ts = pd.Timestamp("2025-06-01", tz="UTC") + pd.to_timedelta(np.arange(n) % 20, unit="D")
        return pd.DataFrame({"event_timestamp": ts, "campaign_id": SERVICE_CAMPAIGN})

    train, test = split_logged(logged(MIN_LOGGED_FOR_HOLDOUT - 1))
    assert test.empty and len(train) == MIN_LOGGED_FOR_HOLDOUT - 1  # too few: all of them train
    frame = logged(1000)
    train, test = split_logged(frame)
    assert len(train) + len(test) == len(frame)
    assert train["event_timestamp"].max() < test["event_timestamp"].min()  # later in time, never mixed
    assert len(test) / len(frame) == pytest.approx(LOGGED_HOLDOUT_SHARE, abs=0.05)
    # more logs later: the holdout only moves forward, so a champion never trained on it
    later = pd.concat([frame, frame.assign(event_timestamp=frame["event_timestamp"] + pd.Timedelta(days=20))])
    assert split_logged(later)[1]["event_timestamp"].min() >= test["event_timestamp"].min()


# --------------------------------------------------------------------------- the world, continued
@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    from training.data.simulator import SimConfig, simulate

    out = tmp_path_factory.mktemp("world")
    simulate(SimConfig(n_members=600, seed=3), out, progress=False)
    return out


def _continue(world: Path, tmp: Path, name: str, sent: pd.DataFrame) -> dict:
    from training.data.advance import advance_world

    copy = tmp / name
    shutil.copytree(world, copy)
    members = pd.read_parquet(copy / "raw" / "members.parquet")
    return advance_world(copy, 7, sent, members) | {"dir": copy}


def test_the_world_answers_what_was_sent_and_only_that(small_world, tmp_path):
    from training.data.advance import world_end

    start = world_end(small_world / "ground_truth")
    members = pd.read_parquet(small_world / "raw" / "members.parquet")["member_id"]
    effects = pd.read_parquet(small_world / "ground_truth" / "offer_effects.parquet")

    def sends(offer: str) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "exposure_id": [f"S{offer}{m}" for m in members],
                "member_id": members,
                "offer_id": offer,
                "ts": start + pd.Timedelta(hours=10),
                "channel": "app",
                "treatment": True,
                "propensity": 1.0,
                "campaign_id": SERVICE_CAMPAIGN,
            }
        )

    nothing = _continue(small_world, tmp_path, "nothing", sends("O00").iloc[:0])
    assert nothing["tables"]["exposures"].empty and nothing["tables"]["responses"].empty
    assert not (nothing["tables"]["transactions"]["channel"] == "campaign").any()  # no answers to nothing
    assert not nothing["tables"]["transactions"].empty  # the members live on: regular purchases

    good = effects.loc[effects["economics"] == "expand", "offer_id"].iloc[0]
    bad = effects.loc[effects["economics"] == "adjust: hurts conversion", "offer_id"].iloc[0]
    answered, out_of = {}, {}
    for offer in (good, bad):
        out = _continue(small_world, tmp_path, offer, sends(offer))
        truth = pd.read_parquet(out["dir"] / "ground_truth" / "exposures" / f"{out['tag']}.parquet")
        pending = pd.read_parquet(out["dir"] / "ground_truth" / "pending.parquet")
        converted = len(out["tables"]["responses"]) + len(pending)  # answers due later wait in pending
        expected = truth["p_convert_treated"].sum()
        assert abs(converted - expected) < 4 * np.sqrt(expected) + 2, (offer, converted, expected)
        answered[offer] = converted
        out_of[offer] = out["tables"]
        assert len(out["tables"]["exposures"]) == len(members)
    assert answered[good] > answered[bad]  # what the service chose changed what happened
    # the same sends listed in another order (the service's decision ids are random): the same world
    shuffled = _continue(small_world, tmp_path, "shuffled", sends(good).sample(frac=1.0, random_state=1))
    for table, rows in shuffled["tables"].items():
        assert_frame_equal(rows, out_of[good][table], obj=table)


def test_an_advance_refuses_sends_outside_its_days(small_world, tmp_path):
    from training.data.advance import WorldError, world_end

    start = world_end(small_world / "ground_truth")
    late = pd.DataFrame(
        {"exposure_id": ["S1"], "member_id": ["M0000001"], "offer_id": ["O00"], "ts": [start + pd.Timedelta(days=9)]}
    ).assign(channel="app", treatment=True, propensity=1.0, campaign_id=SERVICE_CAMPAIGN)
    with pytest.raises(WorldError, match="outside the advanced days"):
        _continue(small_world, tmp_path, "late", late)


# --------------------------------------------------------------------------- daily, day after day
DAILY_MEMBERS = 1500


@pytest.fixture(scope="module")
def daily_world(tmp_path_factory) -> Settings:
    """A small world of its own (the daily cycle changes its data), with churn and offer champions;
    responses count after one day so that three days of service logs already train."""
    from training.world import simulated_world

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("daily"),
        dataset="simulated",
        profile=Profile.embedded,
        control_share=0.1,
        exploration_rate=0.1,
        response_window_days=1,
        feature_timeout_ms=5000,  # a loaded CI machine must not turn ordinary reads into degraded answers
    )
    simulated_world(settings, DAILY_MEMBERS, jobs=("churn", "uplift"))
    return settings


def _env(settings: Settings) -> dict:
    return {"LOYALTY_CONTROL_SHARE": "0.1", "LOYALTY_EXPLORATION_RATE": "0.1", "LOYALTY_RESPONSE_WINDOW_DAYS": "1"}


def _market_day(settings: Settings, day: pd.Timestamp, cohort: int = 300) -> int:
    """The marketing system's day: the service decides for a cohort, the sends are reported."""
    from kernel.curated import load_curated
    from serving.marketing import send_cohort
    from serving.runtime import DecisionRuntime

    runtime = DecisionRuntime(settings)
    members = load_curated(settings, "members")
    ids = members.loc[members["consent_personalisation"], "member_id"].sample(cohort, random_state=day.day).tolist()
    result = send_cohort(runtime, ids, int((day + pd.Timedelta(hours=10)).timestamp()))
    assert result.degraded == 0
    return result.sent


def _daily(settings: Settings, day: pd.Timestamp, *extra: str, env: dict | None = None) -> str:
    args = cli_args(settings, "daily", "--as-of", str(day.date()), "--job", "uplift", "--job", "churn", *extra)
    return run_cli(_env(settings) | (env or {}), *args, timeout=900)


def _daily_under_load(settings: Settings, day: pd.Timestamp, log: Path) -> dict:
    """``daily`` for ``day`` with a retrain while a running service answers four clients; the
    gate's margin is -1 so that the retrained champions are promoted whatever their scores."""
    from mlflow.tracking import MlflowClient

    from kernel.constants import CHAMPION
    from kernel.curated import load_curated
    from kernel.model_store import use_tracking_store

    use_tracking_store(settings)
    client, name = MlflowClient(), settings.model_name("uplift")
    old = int(client.get_model_version_by_alias(name, CHAMPION).version)
    members = load_curated(settings, "members")
    ids = members.loc[members["consent_personalisation"], "member_id"].head(40).tolist()
    # the service's own pseudonym key: the world does not count these load-test decisions as sends
    svc = Service(settings, log, LOYALTY_MODEL_REFRESH_SECONDS="0.5", **_env(settings)).start()
    try:
        fresh_before = httpx.get(svc.url + "/readyz").json()["components"]["feature_store"]
        with Load(svc, ids) as load:
            time.sleep(2)
            _daily(settings, day, "--retrain-every", "2d", env={"LOYALTY_PROMOTION_MARGIN": "-1"})
            new = int(client.get_model_version_by_alias(name, CHAMPION).version)
            seen_new = load.wait_for(new)
            time.sleep(1.5)
        ready = httpx.get(svc.url + "/readyz").json()
        log_text = svc.tail(10_000_000)
    finally:
        svc.stop()
    return {
        "old": old,
        "new": new,
        "answers": load.answers,
        "seen_new": seen_new,
        "fresh_before": fresh_before,
        "ready": ready,
        "log": log_text,
    }


def test_three_days_in_a_row_then_idempotent_then_resumed_after_a_kill(daily_world, tmp_path):
    import mlflow
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from kernel.model_store import use_tracking_store
    from training.data.advance import world_end
    from training.data.ingest import read_batches

    settings = daily_world
    first = world_end(settings.ground_truth_dir)
    days = [first + pd.Timedelta(days=i) for i in range(4)]
    swap = {}
    for i, day in enumerate(days[:3]):
        assert _market_day(settings, day) > 0
        out = run_cli(_env(settings), *cli_args(settings, "data", "simulate", "--advance", "1"))
        assert "offers_sent" in out
        today = day + pd.Timedelta(days=1)
        if i == 1:  # the first retrain, promoted while a running service is under load
            swap = _daily_under_load(settings, today, tmp_path / "service.log")
        else:  # day 1: no retrain yet; day 3: not due a day after day 2's on a 2-day cadence
            _daily(settings, today, "--retrain-every", "never" if i == 0 else "2d")
        journal = Journal(settings.dataset_dir / "daily" / str(today.date()), day)
        assert journal.data["finished"]
        assert journal.result("import")["batches"] == [f"b{i + 1:04d}"]
        assert journal.result("train")["retrained"] is (i == 1)
        assert journal.result("outputs")["churn_list"]["members"] > 0
    assert (
        journal.result("train")["reason"]
        == f"last retrain {days[2].date()}; next due {(days[2] + pd.Timedelta(days=2)).date()}"
    )

    # day 2's promotion reached the running service without a restart: 0 errors, 0 degraded
    answers, old, new = swap["answers"], swap["old"], swap["new"]
    assert new != old and len(answers) > 50
    assert all(status == 200 for status, *_ in answers), [a for a in answers if a[0] != 200][:5]
    assert not any(degraded for _, degraded, _, _ in answers)
    assert {a[2] for a in answers} == {old, new}
    assert all(a[2] == new for a in answers[swap["seen_new"] + 8 :])  # in-flight ones may finish on the old
    assert all(a[3] == {"uplift": a[2]} for a in answers)
    assert "swapped in without restart" in swap["log"]
    models = swap["ready"]["components"]["models"]
    assert models["uplift"]["version"] == new and models["churn"]["status"] == "ok"
    # the day's snapshot was materialised while it served: /readyz shows the fresher features
    fresh_after = swap["ready"]["components"]["feature_store"]
    assert pd.Timestamp(swap["fresh_before"]["materialized_to"]).tz_localize(None) == days[1]
    assert pd.Timestamp(fresh_after["materialized_to"]).tz_localize(None) == days[2]
    # every day's snapshot is in the offline store, once; the online store was loaded up to the last
    stamps = pq.read_table(settings.offline_dir / "member_rfm.parquet", columns=["event_timestamp"]).to_pandas()
    per_day = stamps["event_timestamp"].dt.tz_localize(None).value_counts()
    for day in days[1:4]:
        assert per_day[day] == DAILY_MEMBERS
    from serving.runtime import DecisionRuntime

    fresh = DecisionRuntime(settings).feature_freshness()
    assert pd.Timestamp(fresh["materialized_to"]).tz_localize(None) == days[3]

    # the uplift job learned from the service's own logged exposures, and says so
    use_tracking_store(settings)
    runs = mlflow.search_runs(experiment_names=[settings.experiment_name], filter_string="tags.job = 'uplift'")
    latest = runs.sort_values("start_time").iloc[-1]
    assert int(latest["params.service_logged_rows"]) > 0
    assert "inverse-propensity weighted" in latest["tags.data_used"]

    # a daily run per day in MLflow, each with its drift report
    daily_runs = mlflow.search_runs(experiment_names=[settings.experiment_name + "-daily"])
    assert len(daily_runs) == 3
    client = MlflowClient()
    for run_id in daily_runs["run_id"]:
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"summary.json", "drift_report.json"} <= names
        report = json.loads(Path(client.download_artifacts(run_id, "drift_report.json")).read_text())
        assert report and {"model", "feature", "psi", "status"} <= set(report[0])
        assert any(r["feature"] == "score:churn_probability" for r in report)
    assert (daily_runs["metrics.drift_max_psi"] >= 0).all()

    # idempotent: the finished day again changes nothing
    batches, journal_text = (
        read_batches(settings),
        (settings.dataset_dir / "daily" / str(days[3].date()) / "journal.json").read_text(),
    )
    again = _daily(settings, days[3], "--retrain-every", "2d")
    assert "nothing to do" in again
    assert read_batches(settings) == batches
    assert (settings.dataset_dir / "daily" / str(days[3].date()) / "journal.json").read_text() == journal_text
    assert len(mlflow.search_runs(experiment_names=[settings.experiment_name + "-daily"])) == 3
    # an earlier day cannot run after a later one
    proc = run_cli_process(_env(settings), *cli_args(settings, "daily", "--as-of", str(days[0].date())))
    assert proc.returncode == 2 and "days run in order" in proc.stdout and "Traceback" not in proc.stderr

    # a real kill half way: the rerun starts at the step that did not finish
    _market_day(settings, days[3])
    run_cli(_env(settings), *cli_args(settings, "data", "simulate", "--advance", "1"))
    day5 = days[3] + pd.Timedelta(days=1)
    folder = settings.dataset_dir / "daily" / str(day5.date())
    args = cli_args(settings, "daily", "--as-of", str(day5.date()), "--retrain-every", "never")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **_env(settings)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    killed_in = None
    while time.monotonic() < deadline and proc.poll() is None:
        path = folder / "journal.json"
        if path.exists():
            steps = json.loads(path.read_text())["steps"]
            if steps.get("features", {}).get("status") == "running":
                os.kill(proc.pid, signal.SIGKILL)
                killed_in = "features"
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_in == "features", "the run ended before it could be killed in the features step"
    before = json.loads((folder / "journal.json").read_text())["steps"]
    assert before["validate"]["status"] == "done" and before["features"]["status"] == "running"
    out = _daily(settings, day5, "--retrain-every", "never")
    assert "import: done earlier" in out and "validate: done earlier" in out
    after = json.loads((folder / "journal.json").read_text())
    assert after["finished"]
    assert after["steps"]["validate"]["done_at"] == before["validate"]["done_at"]  # not redone
    assert after["steps"]["features"]["done_at"] > before["features"]["running_at"]
    stamps = pq.read_table(settings.offline_dir / "member_rfm.parquet", columns=["event_timestamp"]).to_pandas()
    assert (stamps["event_timestamp"].dt.tz_localize(None) == day5).sum() == DAILY_MEMBERS  # once, not twice
    assert len(read_batches(settings)) == 4
