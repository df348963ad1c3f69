"""``train all`` runs every job whatever one of them does, and says what happened to each."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import typer

from training.datasets import HistoryTooShort, check_history
from training.jobs.common import JobNotApplicable, JobResult

pytestmark = pytest.mark.unit


def _job(outcome):
    def run(settings, **kwargs):
        if isinstance(outcome, Exception):
            raise outcome
        return JobResult(job="x", run_id="0123456789", metrics={}, comparison=pd.DataFrame({"auc": [0.7]}, index=["m"]))

    return SimpleNamespace(run=run)


def test_train_all_continues_past_a_failing_job_and_exits_1(monkeypatch, capsys):
    import training.jobs
    from cli.train import _train

    jobs = {
        "cf": _job(JobNotApplicable("3 item(s) sold: a catalogue smaller than k=10")),
        "churn": _job(RuntimeError("NaN encountered in factors")),
        "uplift": _job(HistoryTooShort("label_window_days=400 is too long; lower LOYALTY_LABEL_WINDOW_DAYS")),
        "clv": _job(None),
    }
    monkeypatch.setattr(training.jobs, "JOBS", jobs)
    with pytest.raises(typer.Exit) as exit_:
        _train(SimpleNamespace(), list(jobs))
    assert exit_.value.exit_code == 1
    out = capsys.readouterr().out
    table = out[out.index("outcome per job") :]
    for job, outcome in (("cf", "skipped"), ("churn", "failed"), ("uplift", "failed"), ("clv", "done")):
        assert any(job in line and outcome in line for line in table.splitlines()), table
    assert "RuntimeError: NaN encountered in factors" in table and "LOYALTY_LABEL_WINDOW_DAYS" in table
    assert "Traceback" not in out


def test_all_jobs_done_or_skipped_exit_0(monkeypatch):
    import training.jobs
    from cli.train import _train

    monkeypatch.setattr(training.jobs, "JOBS", {"cf": _job(JobNotApplicable("no")), "clv": _job(None)})
    assert set(_train(SimpleNamespace(), ["cf", "clv"])) == {"clv"}


def test_a_label_window_longer_than_the_history_names_the_setting():
    meta = {"start": "2024-01-01", "end": "2024-07-01"}
    end = pd.Timestamp(meta["end"])
    check_history(meta, end - pd.Timedelta(days=30), pd.Timedelta(days=30), 30)  # 182 days hold 3 x 30
    with pytest.raises(
        HistoryTooShort, match=r"label_window_days=90 .*182 days.*LOYALTY_LABEL_WINDOW_DAYS \(at most 59"
    ):
        check_history(meta, end - pd.Timedelta(days=90), pd.Timedelta(days=90), 90)


def test_labels_without_repeat_buyers_or_without_churners_skip_with_the_setting():
    from training.datasets import require_repeat_buyers

    once = pd.DataFrame({"churned": [1, 1, 1]})
    with pytest.raises(JobNotApplicable, match=r"no member bought again within label_window_days=90.*one purchase"):
        require_repeat_buyers(once, 90, "training snapshots")
    loyal = pd.DataFrame({"churned": [0, 0]})
    with pytest.raises(JobNotApplicable, match="every member bought again.*shorter LOYALTY_LABEL_WINDOW_DAYS"):
        require_repeat_buyers(loyal, 90, "holdout window")
    require_repeat_buyers(loyal, 90, "holdout window", need_churners=False)  # value labels need no churners
    require_repeat_buyers(pd.DataFrame({"churned": [0, 1]}), 90, "training snapshots")
