"""``loyalty-ml``: one CLI for data, features and (later) training and serving."""

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
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
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


@app.command("demo")
def demo(ctx: typer.Context, members: int = typer.Option(10_000, min=100)) -> None:
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
