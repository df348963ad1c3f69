"""``loyalty-ml serve|score-churn|score-batch``: the decision service and batch decisions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import typer

from cli.common import console, fail, require_dataset, settings_of
from kernel.constants import MEMBER_ID_MAX_LENGTH, MEMBER_ID_PATTERN
from kernel.settings import Settings


def register(app: typer.Typer) -> None:
    app.command("score-churn")(score_churn)
    app.command("score-batch")(score_batch)
    app.command("serve")(serve)


def score_churn(
    ctx: typer.Context,
    out: Path = typer.Option(Path("churn_scores.parquet"), help="parquet: member, probability, band, driver, action"),
    engine: str = typer.Option("local", help="local | dask (LOYALTY_DASK_SCHEDULER, or a local cluster)"),
    as_of: str | None = typer.Option(None, help="score as of this date (default: the dataset's end)"),
    drivers: bool = typer.Option(True, help="name each member's top risk driver (a SHAP pass: about 3x the time)"),
) -> None:
    """Churn risk of every member with the champion (offline features), for CRM lists and care tasks."""
    require_dataset(settings_of(ctx))
    from training.distributed import churn_scores

    started = time.perf_counter()
    try:
        scores = churn_scores(settings_of(ctx), engine, pd.Timestamp(as_of) if as_of else None, drivers)
    except (FileNotFoundError, ValueError) as err:
        fail(err)
    scores.to_parquet(out, index=False)
    console.print(scores["risk_band"].value_counts().to_dict())
    console.print(f"{len(scores)} members scored ({engine}) in {time.perf_counter() - started:.1f} s -> {out}")


def score_batch(
    ctx: typer.Context,
    members_file: Path = typer.Argument(..., help="parquet or CSV with a member_id column (a campaign list)"),
    budget: float = typer.Option(..., min=0.0, help="total expected offer cost the campaign may spend"),
    out: Path = typer.Option(Path("allocation.parquet"), help="where the chosen (member, offer) rows go"),
) -> None:
    """Decide offers for a member list with the service's decision code, under a budget and stock."""
    require_dataset(settings_of(ctx))
    from serving.runtime import DecisionRuntime

    try:
        frame = pd.read_csv(members_file) if members_file.suffix == ".csv" else pd.read_parquet(members_file)
    except (OSError, ValueError) as err:
        fail(ValueError(f"{members_file}: cannot read ({err})"))
    if "member_id" not in frame.columns:
        fail(ValueError(f"{members_file}: no member_id column (columns: {list(frame.columns)})"))
    ids = frame["member_id"].astype(str)
    bad = ids[~ids.str.fullmatch(MEMBER_ID_PATTERN.strip("^$")) | (ids.str.len() > MEMBER_ID_MAX_LENGTH)]
    if len(bad):
        fail(ValueError(f"{members_file}: invalid member_id at row {bad.index[0]}: {bad.iloc[0]!r}"))
    runtime = DecisionRuntime(settings_of(ctx))
    try:
        chosen, summary = runtime.allocate_campaign(ids.drop_duplicates().tolist(), None, budget)
    except RuntimeError as err:
        fail(err)
    chosen.to_parquet(out, index=False)
    console.print(summary | {"out": str(out)})


def serve(
    ctx: typer.Context,
    port: int = typer.Option(3000, help="HTTP port"),
    host: str = typer.Option("127.0.0.1", help="address to bind (0.0.0.0: every interface, e.g. in a container)"),
) -> None:
    """Run the decision service in the foreground (``bentoml serve``) for the active settings."""
    import subprocess

    from kernel.settings import PROJECT_ROOT
    from serving.launch import service_cmd, service_env

    env = service_env(settings_of(ctx).to_env())
    raise typer.Exit(subprocess.call(service_cmd(port, host=host), cwd=PROJECT_ROOT, env=env))


def serve_and_query(settings: Settings, port: int = 3000) -> str:
    """Start the service, ask it what a marketing system would ask, print the answers, stop it;
    return the member it asked about."""
    import httpx

    from kernel.curated import load_curated
    from serving.launch import ServerProcess

    key = settings.api_keys.split(",")[0]
    log = settings.data_dir / "service.log"
    svc = ServerProcess.decision_service(log, settings.to_env(), port=port)
    try:
        svc.start()
    except (RuntimeError, TimeoutError) as err:
        fail(RuntimeError(f"service did not become ready ({err}); see {log}"))
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
        console.print(f"service log: {log}")
    finally:
        svc.stop()
    return member


def next_steps(settings: Settings, member: str, port: int = 3000) -> str:
    """What to run after the demo, with this data dir, a member that exists and the key in use."""
    flags = f" --data-dir {settings.data_dir}" if settings.data_dir != Settings.model_fields["data_dir"].default else ""
    key = settings.api_keys.split(",")[0]
    body = json.dumps({"member_id": member, "channel": "app", "max_results": 3})
    return "\n".join(
        [
            f"serve:   {'make serve' if not flags else f'.venv/bin/loyalty-ml{flags} serve --port {port}'}"
            f"   (Swagger UI: http://127.0.0.1:{port}/)",
            f"ask:     curl -s -X POST http://127.0.0.1:{port}/next_best_offer -H 'X-API-Key: {key}'"
            f" -H 'Content-Type: application/json' -d '{body}'",
            f"         curl -s -X POST http://127.0.0.1:{port}/churn_risk -H 'X-API-Key: {key}'"
            f" -H 'Content-Type: application/json' -d '{json.dumps({'member_id': member})}'",
            f"runs:    .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}"
            "   then http://127.0.0.1:5000 (experiment "
            f"{settings.experiment_name})",
        ]
    )
