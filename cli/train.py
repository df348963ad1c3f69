"""``loyalty-ml train|models|evaluate ...``: training jobs, the registry, evaluation reports."""

from __future__ import annotations

import logging
import time

import pandas as pd
import typer
from rich.markup import escape

from cli.common import console, fail, require_dataset, settings_of
from kernel.constants import CHURN_SNAPSHOT_DECAY, JOB_NAMES, TRAINING_SNAPSHOTS
from kernel.settings import Profile, Settings

log = logging.getLogger("loyalty_ml.train")
train_app = typer.Typer(help="Train, evaluate, log to MLflow and register models.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models: aliases, promotion gate, audit history.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Evaluate campaigns against their control groups.", no_args_is_help=True)


COUNT_METRICS = ("train_rows", "flagged", "fraud_members")  # shown as whole numbers


def _number(metric: str, value) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:.0f}" if metric in COUNT_METRICS else f"{value:.4f}"


def _train(settings: Settings, jobs: list[str], **options) -> dict:
    from rich.table import Table

    from training.jobs import JOBS
    from training.jobs.common import JobNotApplicable

    results = {}
    outcomes: list[tuple[str, str, str, float]] = []  # job, done/skipped/failed, reason, seconds
    for name in jobs:
        console.rule(f"train {name}")
        kwargs = {k: v for k, v in options.get(name, {}).items() if v is not None}
        started = time.perf_counter()
        try:
            results[name] = JOBS[name].run(settings, **kwargs)
        except JobNotApplicable as err:
            if len(jobs) == 1:
                fail(err)
            console.print(f"[yellow]skipped {name}:[/yellow] {err}")
            outcomes.append((name, "skipped", str(err), time.perf_counter() - started))
            continue
        except (FileNotFoundError, ValueError) as err:  # input or settings: one line naming what to fix
            if len(jobs) == 1:
                fail(err)
            console.print(f"[red]failed {name}:[/red] {escape(str(err))}")
            outcomes.append((name, "failed", str(err), time.perf_counter() - started))
            continue
        except Exception as err:  # one job's bug must not stop the jobs after it
            if len(jobs) == 1:
                raise
            log.exception("job %s failed", name)
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            console.print(f"[red]failed {name}:[/red] {escape(reason)}")
            outcomes.append((name, "failed", reason, time.perf_counter() - started))
            continue
        outcomes.append((name, "done", "", time.perf_counter() - started))
        res = results[name]
        seconds = time.perf_counter() - started
        table = Table(title=f"{name}: holdout metrics (run {res.run_id[:8]}, {seconds:.0f} s)")
        shown = res.comparison.T
        shown = shown.loc[[m for m in shown.index if not m.startswith(("val_", "members_")) and m != "n"]].head(14)
        table.add_column("metric", no_wrap=True)  # full names: several differ only at the end
        for model in shown.columns:
            table.add_column(str(model), justify="right")
        for metric, row in shown.iterrows():
            table.add_row(str(metric), *[_number(str(metric), v) for v in row])
        console.print(table)
        for note in res.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
        if res.decision:
            console.print(f"registered {res.decision.model} v{res.decision.version}: {res.decision.reason}")
        outcomes[-1] = (name, "done", res.decision.reason if res.decision else "", outcomes[-1][3])
    if len(jobs) > 1:
        summary = Table(title="train: outcome per job")
        for col in ("job", "outcome", "seconds", "reason"):
            summary.add_column(col, justify="right" if col == "seconds" else "left")
        for name, outcome, reason, seconds in outcomes:
            colour = {"done": "green", "skipped": "yellow", "failed": "red"}[outcome]
            summary.add_row(name, f"[{colour}]{outcome}[/{colour}]", f"{seconds:.0f}", escape(reason))
        console.print(summary)
        if not results:
            console.print("[yellow]no model trained:[/yellow] the service answers with its defaults (see the reasons)")
        if any(o == "failed" for _, o, _, _ in outcomes):
            raise typer.Exit(code=1)
    return results


@train_app.command("all")
def train_all(
    ctx: typer.Context, trials: int | None = typer.Option(None, help="optuna trials per CF algorithm")
) -> None:
    """Every job in turn: cf, churn, uplift, clv, fraud."""
    _train(settings_of(ctx), list(JOB_NAMES), cf={"trials": trials})


@train_app.command("cf")
def train_cf(
    ctx: typer.Context,
    trials: int | None = typer.Option(None, help="optuna trials per algorithm (default: settings)"),
    algorithm: list[str] = typer.Option(None, help="als | bpr | item_item (repeatable; default all)"),
) -> None:
    """Collaborative filtering (implicit ALS/BPR/item-item) vs popularity and the oracle."""
    _train(settings_of(ctx), ["cf"], cf={"trials": trials, "algorithms": tuple(algorithm) if algorithm else None})


@train_app.command("churn")
def train_churn(
    ctx: typer.Context,
    snapshots: int = typer.Option(TRAINING_SNAPSHOTS, min=1, help="training cutoffs before the holdout"),
    calibration: str = typer.Option("auto", help="auto (lowest cross-validated Brier) | platt | beta | isotonic"),
    engine: str = typer.Option("local", help="local | dask (LOYALTY_DASK_SCHEDULER, or a local cluster)"),
    linear_weight: float | None = typer.Option(
        None, min=0.0, help="the smooth linear score's weight in the log-odds (0: the booster alone; default 1)"
    ),
    snapshot_decay: float = typer.Option(
        CHURN_SNAPSHOT_DECAY,
        min=0.0,
        max=1.0,
        help="each earlier training snapshot's weight relative to the next later one (1: all alike)",
    ),
) -> None:
    """Churn risk (LightGBM, calibrated) vs recency-only and the oracle."""
    if engine not in ("local", "dask"):
        fail(ValueError(f"--engine must be 'local' or 'dask', not {engine!r}"))
    from models.calibration import METHODS as CALIBRATION_METHODS

    if calibration not in ("auto", *CALIBRATION_METHODS):
        methods = ", ".join(CALIBRATION_METHODS)
        fail(ValueError(f"--calibration must be 'auto' or one of {methods}, not {calibration!r}"))
    options = {
        "n_snapshots": snapshots,
        "calibration": calibration,
        "engine": engine,
        "linear_weight": linear_weight,
        "snapshot_decay": snapshot_decay,
    }
    _train(settings_of(ctx), ["churn"], churn=options)


@train_app.command("uplift")
def train_uplift(
    ctx: typer.Context, learner: str = typer.Option("auto", help="auto (best validation Qini) | t | x | dr | r")
) -> None:
    """Offer propensity and uplift (T-, X-, DR- or R-learner) vs propensity-only, random and the oracle."""
    from models.uplift import LEARNERS as UPLIFT_LEARNERS

    if learner not in ("auto", *UPLIFT_LEARNERS):
        fail(ValueError(f"--learner must be 'auto' or one of {', '.join(UPLIFT_LEARNERS)}, not {learner!r}"))
    _train(settings_of(ctx), ["uplift"], uplift={"learner": learner})


@train_app.command("clv")
def train_clv(ctx: typer.Context, snapshots: int = typer.Option(TRAINING_SNAPSHOTS, min=1)) -> None:
    """Expected value (LightGBM Tweedie), 12-month CLV, LoyaltyIndex and RFM segments."""
    _train(settings_of(ctx), ["clv"], clv={"n_snapshots": snapshots})


@train_app.command("fraud")
def train_fraud(ctx: typer.Context, max_fpr: float = typer.Option(0.003, min=0.0, max=1.0)) -> None:
    """Points-farming anomalies at a false-positive-rate budget."""
    _train(settings_of(ctx), ["fraud"], fraud={"max_fpr": max_fpr})


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """Registered models of the active dataset with their champion / challenger versions."""
    require_dataset(settings_of(ctx))
    from mlflow.tracking import MlflowClient

    from kernel.constants import CHALLENGER, CHAMPION
    from kernel.model_store import alias_version, use_tracking_store

    use_tracking_store(settings_of(ctx))
    client = MlflowClient()
    for job in JOB_NAMES:
        name = settings_of(ctx).model_name(job)
        champion, challenger = alias_version(client, name, CHAMPION), alias_version(client, name, CHALLENGER)
        console.print(f"{name:32s} champion={champion or '-':>4}  challenger={challenger or '-':>4}")


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    job: str = typer.Argument(..., help="cf | churn | uplift | clv | fraud"),
    margin: float | None = typer.Option(None, help="required improvement (default: the job's margin)"),
    tolerance_se: float | None = typer.Option(
        None,
        min=0,
        help="the challenger may trail by this many bootstrap standard errors of the gap"
        " (default: the job's; the offer job 1.645, the others 0)",
    ),
) -> None:
    """Promote the challenger unless it trails the champion on the same holdout (margin, noise)."""
    require_dataset(settings_of(ctx))
    from training.registry import promote

    if job not in JOB_NAMES:
        fail(ValueError(f"job must be one of {JOB_NAMES}, not {job!r}"))
    try:
        decision = promote(settings_of(ctx), job, margin, tolerance_se)
    except (FileNotFoundError, ValueError) as err:
        fail(err)
    color = "green" if decision.action == "promoted" else "yellow"
    console.print(f"[{color}]{decision.action}[/{color}] {decision.model} v{decision.version}: {decision.reason}")
    if decision.action != "promoted":
        raise typer.Exit(code=1)


@models_app.command("history")
def models_history(ctx: typer.Context, job: str | None = typer.Argument(None)) -> None:
    """Audit trail: every alias move and refused promotion (who, what, when, scores)."""
    require_dataset(settings_of(ctx))
    from training.registry import history

    df = history(settings_of(ctx), job)
    with pd.option_context("display.width", 250, "display.max_colwidth", 80):
        console.print(df.to_string(index=False) if not df.empty else "no registry events yet")


@evaluate_app.command("campaign")
def evaluate_campaign(
    ctx: typer.Context,
    campaign: str | None = typer.Option(None, help="campaign id (default: every campaign)"),
    segment: list[str] = typer.Option(["tier"], help="tier | lifecycle_stage (repeatable)"),
) -> None:
    """Lift vs control with CIs and p-values, benefit ROI and its decision, per campaign/offer/segment."""
    show_campaign_evaluation(ctx, campaign, tuple(segment), None)


CAMPAIGN_COLUMNS = [
    "treated",
    "control",
    "conversion_lift",
    "conversion_p_value",
    "incremental_revenue",
    "benefit_cost",
    "roi",
    "roi_ci_low",
    "roi_ci_high",
    "decision",
    "true_roi",
    "true_decision",
]


def show_campaign_evaluation(
    ctx: typer.Context, campaign: str | None, segments: tuple[str, ...], tables: tuple[str, ...] | None
) -> None:
    """Print the evaluation's tables (all, or the named ones), each offer's decision with its reason."""
    require_dataset(settings_of(ctx))
    from training.jobs.evaluate import evaluate_campaigns

    try:
        out = evaluate_campaigns(settings_of(ctx), campaign, segments)
    except (ValueError, FileNotFoundError) as err:
        fail(err)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        for name, table in out["tables"].items():
            if tables is not None and name not in tables:
                continue
            console.rule(f"by {name}")
            cols = [c for c in CAMPAIGN_COLUMNS if c in table.columns]
            console.print(table.set_index(table.columns[0])[cols].to_string(), highlight=False)
    offers = out["tables"]["offer"]
    console.rule("decision per offer, and why")
    for row in offers.itertuples():
        console.print(f"{row.offer_id} {row.decision}: {row.reason}", soft_wrap=True, highlight=False)
    console.print(
        "roi = (incremental revenue - cost) / cost, a ratio (roi 19: net return 19 times the benefit's cost);"
        " the programme adjusts below 10, keeps 10-25, expands above 25",
        soft_wrap=True,
    )
    for note in out["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    console.print(f"report: {out['report']} (also in MLflow run {out['run_id'][:8]})", soft_wrap=True)


@evaluate_app.command("policy")
def evaluate_policy(
    ctx: typer.Context,
    candidate: str = typer.Option("p_redeem", help="re-rank the logged candidates by: value | p_redeem"),
    reward_event: str = typer.Option("redemption", help="feedback event that counts as the reward"),
) -> None:
    """Off-policy value (IPS, SNIPS, DR) of a candidate policy from the service's decision log."""
    require_dataset(settings_of(ctx))
    from serving.state import ServingState
    from training.evaluation.ope import evaluate_logged
    from training.jobs.evaluate import logged_from_service

    s = settings_of(ctx)
    if candidate not in ("value", "p_redeem"):
        fail(ValueError(f"candidate must be 'value' or 'p_redeem', not {candidate!r}"))
    if s.profile is Profile.embedded and not s.serving_db.exists():
        fail(FileNotFoundError(f"{s.serving_db} missing: the service has logged no decisions yet"))
    logged = logged_from_service(
        ServingState(s.serving_state_url, s.pseudonym_key, s.serving_state_prefix), reward_event
    )
    if logged.empty:
        fail(ValueError("no personalised decisions with candidates in the log"))
    console.print(evaluate_logged(logged, candidate))
