"""``loyalty-ml daily``: one day of a living programme, the unit a scheduler runs.

import the exports waiting in the inbox -> validate -> the day's feature snapshot alone ->
Feast materialize-incremental -> batch outputs (churn list, campaign allocation) -> on the retrain
cadence: retrain, promotion gate, promote -> a summary and a drift report, logged to MLflow.

Each step is recorded in ``<dataset>/daily/<date>/journal.json`` as it starts and ends, so that a
day killed half way resumes at the step that did not finish, and a finished day is never redone.
A lock keeps two runs (an overlapping cron start) from working on one dataset at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import typer

from cli.common import console, fail, require_dataset, settings_of
from kernel.constants import JOB_NAMES
from kernel.settings import Settings

STEPS = ("import", "validate", "features", "materialize", "outputs", "train", "report")
DAILY_EXPERIMENT_SUFFIX = "-daily"  # the days' runs, apart from the training runs they are compared with


class DayError(ValueError):
    """The day cannot run as asked (a date, a cadence, the store's state): exit 2."""


def parse_cadence(text: str) -> int:
    """``7d`` -> 7 (days between retrains); ``0`` or ``never`` -> 0 (never retrain)."""
    if text.strip().lower() in ("0", "never"):
        return 0
    match = re.fullmatch(r"\s*(\d+)\s*d\s*", text.lower())
    if not match or int(match.group(1)) < 1:
        raise DayError(f"--retrain-every: expected days such as 7d (or never), not {text!r}")
    return int(match.group(1))


def parse_day(text: str | None) -> pd.Timestamp:
    """The day's cut: midnight (UTC) at the start of ``text`` (default: today)."""
    try:
        day = pd.Timestamp(text) if text else pd.Timestamp.now(tz="UTC").tz_localize(None)
    except ValueError:
        raise DayError(f"--as-of: expected a date such as 2025-07-01, not {text!r}") from None
    if day.tzinfo is not None:
        day = day.tz_convert("UTC").tz_localize(None)
    return day.normalize()


def retrain_due(last: str | None, day: pd.Timestamp, every: int) -> bool:
    """A retrain is due on the first day, and ``every`` days after the last one (never when 0)."""
    if every == 0:
        return False
    return last is None or (day - pd.Timestamp(last)).days >= every


class Journal:
    """One day's steps: status (running / done / failed), times and results, written atomically."""

    def __init__(self, folder: Path, day: pd.Timestamp):
        self.path = folder / "journal.json"
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
        else:
            self.data = {"as_of": str(day.date()), "steps": {}, "finished": False}

    def status(self, step: str) -> str | None:
        return self.data["steps"].get(step, {}).get("status")

    def result(self, step: str) -> dict:
        return self.data["steps"].get(step, {}).get("result", {})

    def mark(self, step: str, status: str, **fields) -> None:
        entry = self.data["steps"].setdefault(step, {})
        entry.update({"status": status, f"{status}_at": _now(), "pid": os.getpid(), **fields})
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)  # a kill leaves the old journal or the new one, never half of one


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@contextmanager
def day_lock(settings: Settings) -> Iterator[None]:
    folder = settings.dataset_dir / "daily"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DayError(f"another `loyalty-ml daily` is running on dataset {settings.dataset!r}") from None
        yield  # the lock goes with the process, also when it is killed


def finished_days(settings: Settings) -> list[str]:
    days = []
    for path in sorted((settings.dataset_dir / "daily").glob("*/journal.json")):
        if json.loads(path.read_text()).get("finished"):
            days.append(path.parent.name)
    return days


def daily(
    ctx: typer.Context,
    as_of: str | None = typer.Option(None, help="the day's cut, a date (default: today, UTC)"),
    retrain_every: str = typer.Option("7d", help="days between retrains, e.g. 7d; never: no retraining"),
    job: list[str] = typer.Option(None, help="jobs to retrain (repeatable; default: all)"),
    budget: float = typer.Option(1000.0, min=0.0, help="expected offer cost the day's campaign allocation may spend"),
) -> None:
    """Run one day of the programme: import, validate, snapshot, materialize, batch outputs,
    retrain on cadence, report. Re-running a finished day changes nothing; a day that stopped
    half way resumes at the step that did not finish."""
    settings = require_dataset(settings_of(ctx))
    try:
        day, every = parse_day(as_of), parse_cadence(retrain_every)
        jobs = list(job or JOB_NAMES)
        unknown = [j for j in jobs if j not in JOB_NAMES]
        if unknown:
            raise DayError(f"--job: unknown job {unknown[0]!r} (jobs: {', '.join(JOB_NAMES)})")
        with day_lock(settings):
            run_day(settings, day, every, jobs, budget)
    except DayError as err:
        fail(err)


def run_day(settings: Settings, day: pd.Timestamp, every: int, jobs: list[str], budget: float) -> Journal:
    from kernel.contracts import ContractError
    from training.data.mapping import MappingError

    folder = settings.dataset_dir / "daily" / str(day.date())
    journal = Journal(folder, day)
    if journal.data["finished"]:
        console.print(f"day {day.date()} finished at {journal.data['finished_at']}: nothing to do")
        _print_summary(journal)
        return journal
    later = [d for d in finished_days(settings) if d > str(day.date())]
    if later:
        raise DayError(f"--as-of {day.date()} is before the last finished day {later[-1]}: days run in order")
    steps: dict[str, Callable[[], dict]] = {
        "import": lambda: _import(settings),
        "validate": lambda: _validate(settings),
        "features": lambda: _features(settings, day),
        "materialize": lambda: _materialize(settings, day),
        "outputs": lambda: _outputs(settings, day, folder, budget),
        "train": lambda: _retrain(settings, day, every, jobs),
        "report": lambda: _report(settings, day, folder, journal),
    }
    for name in STEPS:
        if journal.status(name) == "done":
            console.print(f"[dim]{name}: done earlier ({journal.data['steps'][name]['done_at']})[/dim]")
            continue
        console.rule(f"{day.date()} {name}")
        journal.mark(name, "running")
        started = time.perf_counter()
        try:
            result = steps[name]()
        except (ContractError, MappingError, FileNotFoundError, DayError) as err:
            journal.mark(name, "failed", error=str(err))
            raise DayError(f"{name}: {err}") from None
        except (Exception, typer.Exit) as err:
            journal.mark(name, "failed", error=f"{type(err).__name__}: {err}")
            raise
        journal.mark(name, "done", seconds=round(time.perf_counter() - started, 1), result=result)
        console.print(result)
    journal.data.update({"finished": True, "finished_at": _now()})
    journal.save()
    _print_summary(journal)
    return journal


# --------------------------------------------------------------------------- steps
def _import(settings: Settings) -> dict:
    from training.data.ingest import import_pending

    records = import_pending(settings)
    return {
        "exports": [r["export"] for r in records],
        "batches": [r["batch_id"] for r in records],
        "already_imported": sum(bool(r.get("skipped")) for r in records),
        "rows": sum(sum(r["rows"].values()) for r in records if not r.get("skipped")),
        "rejected_on_import": sum(sum(r["rejected_on_import"].values()) for r in records if not r.get("skipped")),
    }


def _validate(settings: Settings) -> dict:
    from training.data.validation import validate_dataset

    report = validate_dataset(settings)
    quarantined = {
        t: r["quarantined_contract"] + r["quarantined_reference"] + r["quarantined_conflict"] for t, r in report.items()
    }
    return {"curated_rows": sum(r["valid"] for r in report.values()), "quarantined": quarantined}


def _features(settings: Settings, day: pd.Timestamp) -> dict:
    from training.featurize import TIER_SINCE, append_snapshot

    profile = settings.offline_dir / "member_profile.parquet"
    if not profile.exists():
        raise DayError(f"{profile} missing: build the history once with `loyalty-ml features build`")
    import pyarrow.parquet as pq

    if TIER_SINCE not in pq.read_schema(profile).names:
        raise DayError("the offline store predates daily snapshots: rebuild it once with `loyalty-ml features build`")
    counts = append_snapshot(settings, day)
    return {"snapshot": str(day), "rows": counts}


def _materialize(settings: Settings, day: pd.Timestamp) -> dict:
    from features.store import materialize_incremental

    materialize_incremental(settings, day)
    return {"materialized_to": str(day)}


def _outputs(settings: Settings, day: pd.Timestamp, folder: Path, budget: float) -> dict:
    """The churn list (every member, with driver and action) and the day's campaign allocation."""
    from kernel.curated import load_curated
    from kernel.model_store import champion_versions
    from serving.runtime import DecisionRuntime
    from training.distributed import churn_scores

    versions = champion_versions(settings, ("churn", "uplift"))
    out: dict = {}
    if versions.get("churn"):
        churn = churn_scores(settings, "local", day, drivers=True)
        churn.to_parquet(folder / "churn_list.parquet", index=False)
        out["churn_list"] = {"members": len(churn), "bands": churn["risk_band"].value_counts().to_dict()}
    else:
        out["churn_list"] = "skipped: no churn champion"
    if versions.get("uplift"):
        ids = load_curated(settings, "members", columns=["member_id"])["member_id"].tolist()
        chosen, summary = DecisionRuntime(settings).allocate_campaign(ids, int(day.timestamp()), budget)
        chosen.to_parquet(folder / "allocation.parquet", index=False)
        out["allocation"] = summary
    else:
        out["allocation"] = "skipped: no uplift champion"
    return out


def _retrain(settings: Settings, day: pd.Timestamp, every: int, jobs: list[str]) -> dict:
    from cli.train import _train
    from training.registry import promote

    state_path = settings.dataset_dir / "daily" / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    last = state.get("last_retrain")
    if last == str(day.date()):
        return {"retrained": False, "reason": "retrained earlier today"}
    if not retrain_due(last, day, every):
        due = "never" if every == 0 else str((pd.Timestamp(last) + pd.Timedelta(days=every)).date())
        return {"retrained": False, "reason": f"last retrain {last}; next due {due}"}
    results = _train(settings, jobs)
    outcome = {}
    for job, res in results.items():
        decision = res.decision
        if decision is not None and decision.action == "registered":  # a challenger: through the gate
            decision = promote(settings, job)
        outcome[job] = {"action": decision.action if decision else "not registered", "version": decision.version}
    state_path.write_text(json.dumps(state | {"last_retrain": str(day.date())}))
    return {"retrained": True, "models": outcome}


def _report(settings: Settings, day: pd.Timestamp, folder: Path, journal: Journal) -> dict:
    """The day's summary and the drift of every served feature and score against each
    champion's training data, in ``folder`` and as a run of the ``-daily`` experiment."""
    import mlflow

    from training.tracking import configure, log_table

    drift = drift_against_champions(settings, day, folder / "churn_list.parquet")
    drift.to_csv(folder / "drift_report.csv", index=False)
    summary = summary_table(journal)
    summary.to_csv(folder / "summary.csv", index=False)
    configure(settings, settings.experiment_name + DAILY_EXPERIMENT_SUFFIX)
    warning = settings.drift_psi_warning
    flagged = drift[drift["status"] == "warning"]
    with mlflow.start_run(run_name=f"daily {day.date()}") as run:
        mlflow.set_tags({"job": "daily", "as_of": str(day.date()), "dataset": settings.dataset})
        mlflow.log_params({"as_of": str(day.date()), "psi_warning": warning})
        metrics = {f"{r.step}_seconds": r.seconds for r in summary.itertuples() if pd.notna(r.seconds)}
        metrics |= {
            "drift_max_psi": float(drift["psi"].max()) if len(drift) else 0.0,
            "drift_warnings": float(len(flagged)),
        }
        mlflow.log_metrics(metrics)
        log_table(summary, "summary.json")
        log_table(drift, "drift_report.json")
        if len(drift):
            from training import plots

            mlflow.log_figure(plots.drift(drift, warning), "plots/drift.png")
    for r in flagged.head(10).itertuples():
        console.print(f"[yellow]drift warning:[/yellow] {r.model} {r.feature} PSI {r.psi:.3f} >= {warning}")
    return {
        "run_id": run.info.run_id,
        "drift_features": len(drift),
        "drift_warnings": len(flagged),
        "drift_max_psi": round(float(drift["psi"].max()), 4) if len(drift) else None,
    }


def drift_against_champions(settings: Settings, day: pd.Timestamp, churn_list: Path) -> pd.DataFrame:
    """PSI of the served features at ``day`` (the online feature service, every member), and of the
    day's churn scores, against each served champion's drift reference."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from features.store import get_store, latest_features
    from kernel.constants import CHAMPION, ONLINE_FEATURE_SERVICE, SERVED_JOBS
    from kernel.model_store import use_tracking_store
    from training.drift import DRIFT_REFERENCE, SCORE_PREFIX, drift_report

    use_tracking_store(settings)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per tiny JSON in the day's log
    client = MlflowClient()
    served = latest_features(settings, get_store(settings), ONLINE_FEATURE_SERVICE, day)
    if churn_list.exists():
        scores = pd.read_parquet(churn_list, columns=["member_id", "churn_probability"])
        served = served.merge(scores.rename(columns={"churn_probability": f"{SCORE_PREFIX}churn_probability"}), "left")
    parts = []
    for job in SERVED_JOBS:
        try:
            mv = client.get_model_version_by_alias(settings.model_name(job), CHAMPION)
            reference = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/{DRIFT_REFERENCE}")
        except (MlflowException, OSError):
            continue  # no champion, or one trained before references were logged
        report = drift_report(reference, served, settings.drift_psi_warning)
        parts.append(report.assign(model=job, version=int(mv.version)))
    columns = ["model", "version", "feature", "psi", "rows", "status"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns].sort_values("psi", ascending=False, ignore_index=True)


def summary_table(journal: Journal) -> pd.DataFrame:
    """One row per step: status, seconds and its result in one line."""
    rows = []
    for step in STEPS:
        entry = journal.data["steps"].get(step, {})
        result = entry.get("result") or entry.get("error") or ""
        rows.append(
            {
                "step": step,
                "status": entry.get("status", "running" if step == "report" else "-"),
                "seconds": entry.get("seconds"),
                "result": json.dumps(result, default=str) if not isinstance(result, str) else result,
            }
        )
    return pd.DataFrame(rows)


def _print_summary(journal: Journal) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"day {journal.data['as_of']}")
    for col in ("step", "status", "seconds", "result"):
        table.add_column(col, justify="right" if col == "seconds" else "left", overflow="fold")
    for r in summary_table(journal).itertuples():
        seconds = "" if r.seconds is None or pd.isna(r.seconds) else f"{r.seconds:.1f}"
        table.add_row(r.step, r.status, seconds, escape(r.result[:300]))
    console.print(table)
