"""``loyalty-ml``: one CLI for data, features, training and the model registry."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console

from training.data.adapters import SharedDataMissing
from training.data.contracts import ContractError
from training.settings import Profile, Settings, get_settings

app = typer.Typer(help="Loyalty decision service: data, features, training, serving.", no_args_is_help=True)
data_app = typer.Typer(help="Generate or load raw data and validate it against the contracts.", no_args_is_help=True)
features_app = typer.Typer(
    help="Build feature snapshots, apply the Feast repo, materialise, inspect.", no_args_is_help=True
)
train_app = typer.Typer(help="Train, evaluate, log to MLflow and register models.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models: aliases, promotion gate, audit history.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
evaluate_app = typer.Typer(help="Evaluate campaigns against their control groups.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")
JOB_NAMES = ("cf", "churn", "uplift", "clv", "fraud")
console = Console()


@app.callback()
def main(
    ctx: typer.Context,
    dataset: str | None = typer.Option(None, help="simulated | online_retail | complete_journey"),
    profile: Profile | None = typer.Option(None, help="embedded (default) or production"),
    data_dir: Path | None = typer.Option(None, help="where datasets, stores and runs live"),
) -> None:
    # Flags are another way to set the LOYALTY_* variables, so that the Feast repo modules
    # (which read the settings when imported) see the same values as this command.
    for key, value in {"dataset": dataset, "profile": profile, "data_dir": data_dir}.items():
        if value is not None:
            os.environ[f"LOYALTY_{key.upper()}"] = value.value if isinstance(value, Profile) else str(value)
    get_settings.cache_clear()
    ctx.obj = get_settings()


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(code=2)


@data_app.command("simulate")
def data_simulate(ctx: typer.Context, members: int = typer.Option(10_000, min=100), seed: int | None = None) -> None:
    """Simulate members (with ground truth) into the ``simulated`` dataset."""
    from training.data.ingest import simulate_dataset

    settings: Settings = ctx.obj.model_copy(update={"dataset": "simulated"})
    counts = simulate_dataset(settings, members, seed)
    console.print({k: v for k, v in counts.items()})


@data_app.command("load")
def data_load(ctx: typer.Context) -> None:
    """Map the public data set named by --dataset into the contracts' raw tables."""
    from training.data.ingest import load_public_dataset

    try:
        out = load_public_dataset(ctx.obj)
    except (SharedDataMissing, ValueError) as err:
        _fail(err)
    console.print({"adapter_rejected": out.rejected_counts(), "notes": out.notes})


@data_app.command("validate")
def data_validate(ctx: typer.Context) -> None:
    """Validate raw tables: curated rows continue, bad rows are quarantined with the reason."""
    from training.data.ingest import print_report, validate_dataset

    try:
        report = validate_dataset(ctx.obj)
    except (ContractError, FileNotFoundError) as err:
        _fail(err)
    print_report(report, console)
    console.print(f"quarantine: {ctx.obj.quarantine_dir}")


@features_app.command("build")
def features_build(ctx: typer.Context) -> None:
    """Compute point-in-time member feature snapshots into the offline store."""
    from training.featurize import build_feature_tables

    try:
        console.print(build_feature_tables(ctx.obj))
    except FileNotFoundError as err:
        _fail(err)


@features_app.command("apply")
def features_apply(ctx: typer.Context) -> None:
    """Register entities, views and services in the Feast registry of the active profile."""
    from features.store import apply

    apply(ctx.obj)
    console.print(
        f"applied feature repo to project {ctx.obj.feast_project}_{ctx.obj.dataset} ({ctx.obj.profile.value})"
    )


@features_app.command("materialize")
def features_materialize(ctx: typer.Context) -> None:
    """Load the latest feature values (as of the dataset's end) into the online store."""
    from features.store import materialize
    from training.data.ingest import read_meta

    materialize(ctx.obj, pd.Timestamp(read_meta(ctx.obj)["end"]))


@features_app.command("show")
def features_show(ctx: typer.Context, n: int = 3, member: list[str] = typer.Option(None)) -> None:
    """Print online features for a few members (as the decision service would read them)."""
    from features.store import get_store, online_features
    from training.data.ingest import load_curated, read_meta

    ids = member or load_curated(ctx.obj, "members")["member_id"].head(n).tolist()
    end = pd.Timestamp(read_meta(ctx.obj)["end"])
    df = online_features(get_store(ctx.obj), ids, int(end.timestamp()))
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        console.print(df.set_index("member_id").T.to_string())


def _train(settings: Settings, jobs: list[str], **options) -> dict:
    from rich.table import Table

    from training.jobs import JOBS
    from training.jobs.common import JobNotApplicable

    results = {}
    for name in jobs:
        console.rule(f"train {name}")
        kwargs = {k: v for k, v in options.get(name, {}).items() if v is not None}
        started = time.perf_counter()
        try:
            results[name] = JOBS[name].run(settings, **kwargs)
        except JobNotApplicable as err:
            if len(jobs) == 1:
                _fail(err)
            console.print(f"[yellow]skipped {name}:[/yellow] {err}")
            continue
        except (FileNotFoundError, ValueError) as err:
            _fail(err)
        res = results[name]
        seconds = time.perf_counter() - started
        table = Table(title=f"{name}: holdout metrics (run {res.run_id[:8]}, {seconds:.0f} s)")
        shown = res.comparison.T
        shown = shown.loc[[m for m in shown.index if not m.startswith(("val_", "members_")) and m != "n"]].head(14)
        table.add_column("metric")
        for model in shown.columns:
            table.add_column(str(model), justify="right")
        for metric, row in shown.iterrows():
            table.add_row(str(metric), *[f"{v:.4f}" if pd.notna(v) else "-" for v in row])
        console.print(table)
        for note in res.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
        if res.decision:
            console.print(f"registered {res.decision.model} v{res.decision.version}: {res.decision.reason}")
    return results


@train_app.command("all")
def train_all(
    ctx: typer.Context, trials: int | None = typer.Option(None, help="optuna trials per CF algorithm")
) -> None:
    """Every job in turn: cf, churn, uplift, clv, fraud."""
    _train(ctx.obj, list(JOB_NAMES), cf={"trials": trials})


@train_app.command("cf")
def train_cf(
    ctx: typer.Context,
    trials: int | None = typer.Option(None, help="optuna trials per algorithm (default: settings)"),
    algorithm: list[str] = typer.Option(None, help="als | bpr | item_item (repeatable; default all)"),
) -> None:
    """Collaborative filtering (implicit ALS/BPR/item-item) vs popularity and the oracle."""
    _train(ctx.obj, ["cf"], cf={"trials": trials, "algorithms": tuple(algorithm) if algorithm else None})


@train_app.command("churn")
def train_churn(
    ctx: typer.Context,
    snapshots: int = typer.Option(6, min=1, help="training cutoffs before the holdout"),
    calibration: str = typer.Option("isotonic", help="isotonic | platt"),
    engine: str = typer.Option("local", help="local | dask (LOYALTY_DASK_SCHEDULER, or a local cluster)"),
) -> None:
    """Churn risk (LightGBM, calibrated) vs recency-only and the oracle."""
    if engine not in ("local", "dask"):
        _fail(ValueError(f"--engine must be 'local' or 'dask', not {engine!r}"))
    _train(ctx.obj, ["churn"], churn={"n_snapshots": snapshots, "calibration": calibration, "engine": engine})


@train_app.command("uplift")
def train_uplift(ctx: typer.Context, learner: str = typer.Option("t", help="t | x")) -> None:
    """Offer propensity and uplift (T-/X-learner) vs propensity-only, random and the oracle."""
    _train(ctx.obj, ["uplift"], uplift={"learner": learner})


@train_app.command("clv")
def train_clv(ctx: typer.Context, snapshots: int = typer.Option(6, min=1)) -> None:
    """Expected value (LightGBM Tweedie), 12-month CLV, LoyaltyIndex and RFM segments."""
    _train(ctx.obj, ["clv"], clv={"n_snapshots": snapshots})


@train_app.command("fraud")
def train_fraud(ctx: typer.Context, max_fpr: float = typer.Option(0.003, min=0.0, max=1.0)) -> None:
    """Points-farming anomalies at a false-positive-rate budget."""
    _train(ctx.obj, ["fraud"], fraud={"max_fpr": max_fpr})


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """Registered models of the active dataset with their champion / challenger versions."""
    from mlflow.tracking import MlflowClient

    from training.registry import CHALLENGER, CHAMPION, alias_version
    from training.tracking import configure

    configure(ctx.obj)
    client = MlflowClient()
    for job in JOB_NAMES:
        name = ctx.obj.model_name(job)
        champion, challenger = alias_version(client, name, CHAMPION), alias_version(client, name, CHALLENGER)
        console.print(f"{name:32s} champion={champion or '-':>4}  challenger={challenger or '-':>4}")


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    job: str = typer.Argument(..., help="cf | churn | uplift | clv | fraud"),
    margin: float | None = typer.Option(None, help="required improvement (default: the job's margin)"),
) -> None:
    """Promote the challenger if it beats the champion on the same holdout by the margin."""
    from training.registry import promote

    if job not in JOB_NAMES:
        _fail(ValueError(f"job must be one of {JOB_NAMES}, not {job!r}"))
    try:
        decision = promote(ctx.obj, job, margin)
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    color = "green" if decision.action == "promoted" else "yellow"
    console.print(f"[{color}]{decision.action}[/{color}] {decision.model} v{decision.version}: {decision.reason}")
    if decision.action != "promoted":
        raise typer.Exit(code=1)


@models_app.command("history")
def models_history(ctx: typer.Context, job: str | None = typer.Argument(None)) -> None:
    """Audit trail: every alias move and refused promotion (who, what, when, scores)."""
    from training.registry import history

    df = history(ctx.obj, job)
    with pd.option_context("display.width", 250, "display.max_colwidth", 80):
        console.print(df.to_string(index=False) if not df.empty else "no registry events yet")


@evaluate_app.command("campaign")
def evaluate_campaign(
    ctx: typer.Context,
    campaign: str | None = typer.Option(None, help="campaign id (default: every campaign)"),
    segment: list[str] = typer.Option(["tier"], help="tier | lifecycle_stage (repeatable)"),
) -> None:
    """Lift vs control with CIs and p-values, benefit ROI and its decision, per campaign/offer/segment."""
    from training.evaluation.campaign import evaluate_campaigns

    try:
        out = evaluate_campaigns(ctx.obj, campaign, tuple(segment))
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    cols = [
        "treated",
        "control",
        "conversion_lift",
        "conversion_p_value",
        "incremental_revenue",
        "benefit_cost",
        "roi",
        "decision",
    ]
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        for name, table in out["tables"].items():
            console.rule(f"by {name}")
            console.print(table.set_index(table.columns[0])[cols].to_string())
    for note in out["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"report: {out['report']} (also in MLflow run {out['run_id'][:8]})")


@evaluate_app.command("policy")
def evaluate_policy(
    ctx: typer.Context,
    candidate: str = typer.Option("p_redeem", help="re-rank the logged candidates by: value | p_redeem"),
    reward_event: str = typer.Option("redemption", help="feedback event that counts as the reward"),
) -> None:
    """Off-policy value (IPS, SNIPS, DR) of a candidate policy from the service's decision log."""
    from serving.state import ServingState
    from training.evaluation.ope import evaluate_logged, logged_from_service
    from training.settings import Profile

    s = ctx.obj
    if candidate not in ("value", "p_redeem"):
        _fail(ValueError(f"candidate must be 'value' or 'p_redeem', not {candidate!r}"))
    if s.profile is Profile.embedded and not s.serving_db.exists():
        _fail(FileNotFoundError(f"{s.serving_db} missing: the service has logged no decisions yet"))
    logged = logged_from_service(
        ServingState(s.serving_state_url, s.pseudonym_key, s.serving_state_prefix), reward_event
    )
    if logged.empty:
        _fail(ValueError("no personalised decisions with candidates in the log"))
    console.print(evaluate_logged(logged, candidate))


@app.command("score-churn")
def score_churn(
    ctx: typer.Context,
    out: Path = typer.Option(Path("churn_scores.parquet"), help="parquet: member, probability, band, driver, action"),
    engine: str = typer.Option("local", help="local | dask (LOYALTY_DASK_SCHEDULER, or a local cluster)"),
    as_of: str | None = typer.Option(None, help="score as of this date (default: the dataset's end)"),
) -> None:
    """Churn risk of every member with the champion (offline features), for CRM lists and care tasks."""
    from training.distributed import churn_scores

    started = time.perf_counter()
    try:
        scores = churn_scores(ctx.obj, engine, pd.Timestamp(as_of) if as_of else None)
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    scores.to_parquet(out, index=False)
    console.print(scores["risk_band"].value_counts().to_dict())
    console.print(f"{len(scores)} members scored ({engine}) in {time.perf_counter() - started:.1f} s -> {out}")


@app.command("score-batch")
def score_batch(
    ctx: typer.Context,
    members_file: Path = typer.Argument(..., help="parquet or CSV with a member_id column (a campaign list)"),
    budget: float = typer.Option(..., min=0.0, help="total expected offer cost the campaign may spend"),
    out: Path = typer.Option(Path("allocation.parquet"), help="where the chosen (member, offer) rows go"),
) -> None:
    """Decide offers for a member list with the service's decision code, under a budget and stock."""
    from serving import decisions
    from serving.runtime import DecisionRuntime

    try:
        frame = pd.read_csv(members_file) if members_file.suffix == ".csv" else pd.read_parquet(members_file)
    except (OSError, ValueError) as err:
        _fail(ValueError(f"{members_file}: cannot read ({err})"))
    if "member_id" not in frame.columns:
        _fail(ValueError(f"{members_file}: no member_id column (columns: {list(frame.columns)})"))
    ids = frame["member_id"].astype(str)
    bad = ids[~ids.str.fullmatch(r"[A-Za-z0-9_\-.:]{1,64}")]
    if len(bad):
        _fail(ValueError(f"{members_file}: invalid member_id at row {bad.index[0]}: {bad.iloc[0]!r}"))
    runtime = DecisionRuntime(ctx.obj)
    try:
        pairs, skipped = runtime.score_batch(ids.drop_duplicates().tolist(), None)
    except RuntimeError as err:
        _fail(err)
    stock = runtime.stock_left().clip(lower=0).astype(int).to_dict()
    chosen, summary = decisions.allocate(pairs, budget, stock)
    chosen.to_parquet(out, index=False)
    console.print(summary | {"skipped": skipped, "out": str(out)})


@app.command("serve")
def serve(ctx: typer.Context, port: int = typer.Option(3000, help="HTTP port")) -> None:
    """Run the decision service in the foreground (``bentoml serve``) for the active settings."""
    import subprocess

    from serving.launch import service_cmd
    from training.settings import PROJECT_ROOT

    raise typer.Exit(subprocess.call(service_cmd(port, host="0.0.0.0"), cwd=PROJECT_ROOT))


def _serve_and_query(settings: Settings, port: int = 3000) -> None:
    """Start the service, ask it what a marketing system would ask, print the answers, stop it."""
    import json

    import httpx

    from serving.launch import ServerProcess
    from training.data.ingest import load_curated

    key = settings.api_keys.split(",")[0]
    log = settings.data_dir / "service.log"
    svc = ServerProcess.decision_service(log, port=port)
    try:
        svc.start()
    except (RuntimeError, TimeoutError) as err:
        _fail(RuntimeError(f"service did not become ready ({err}); see {log}"))
    url = svc.url
    try:
        members = load_curated(settings, "members")
        member = str(members.loc[members["consent_personalisation"].astype(bool), "member_id"].iloc[0])
        calls = [
            ("/next_best_offer", {"member_id": member, "channel": "app", "max_results": 3}),
            ("/churn_risk", {"member_id": member}),
            ("/recommendations", {"member_id": member, "k": 5}),
            ("/personalized_benefits", {"member_id": member, "max_results": 3}),
            ("/next_best_offer", {"member_id": "SOMEONE-NEW"}),
        ]
        for path, body in calls:
            t = time.perf_counter()
            res = httpx.post(url + path, json=body, headers={"X-API-Key": key}, timeout=30)
            ms = (time.perf_counter() - t) * 1000
            console.print(f"[bold]POST {path}[/bold] {json.dumps(body)} -> {res.status_code} in {ms:.0f} ms")
            console.print_json(res.text)
        console.print(f"service log: {log}; run it yourself with `loyalty-ml serve`")
    finally:
        svc.stop()


@app.command("demo")
def demo(
    ctx: typer.Context,
    members: int = typer.Option(10_000, min=100),
    port: int = typer.Option(3000, help="port of the demo service"),
) -> None:
    """Run the main job end to end on the active profile (simulated data unless --dataset)."""
    timings = {}
    started = time.perf_counter()
    steps = [
        ("data", lambda: data_simulate(ctx, members, None) if ctx.obj.dataset == "simulated" else data_load(ctx)),
        ("validate", lambda: data_validate(ctx)),
        ("features build", lambda: features_build(ctx)),
        ("features apply", lambda: features_apply(ctx)),
        ("materialize", lambda: features_materialize(ctx)),
        ("online read", lambda: features_show(ctx, 3, None)),
        ("train", lambda: _train(ctx.obj, list(JOB_NAMES))),
        ("models", lambda: models_list(ctx)),
        ("serve + query", lambda: _serve_and_query(ctx.obj, port)),
    ]
    for name, step in steps:
        console.rule(name)
        t = time.perf_counter()
        step()
        timings[name] = round(time.perf_counter() - t, 1)
    console.rule("done")
    console.print({"seconds": timings, "total": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    app()
