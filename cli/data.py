"""``loyalty-ml data ...`` and ``loyalty-ml features ...``: raw data to curated tables to features."""

from __future__ import annotations

import pandas as pd
import typer

from cli.common import console, fail, require_dataset, settings_of
from kernel.contracts import ContractError
from kernel.settings import Settings
from training.data.adapters import SharedDataMissing

data_app = typer.Typer(help="Generate or load raw data and validate it against the contracts.", no_args_is_help=True)
features_app = typer.Typer(
    help="Build feature snapshots, apply the Feast repo, materialise, inspect.", no_args_is_help=True
)


@data_app.command("simulate")
def data_simulate(ctx: typer.Context, members: int = typer.Option(10_000, min=100), seed: int | None = None) -> None:
    """Simulate members (with ground truth) into the ``simulated`` dataset."""
    from training.data.ingest import simulate_dataset

    settings: Settings = settings_of(ctx).model_copy(update={"dataset": "simulated"})
    counts = simulate_dataset(settings, members, seed)
    console.print({k: v for k, v in counts.items()})


@data_app.command("load")
def data_load(ctx: typer.Context) -> None:
    """Map the public data set named by --dataset into the contracts' raw tables."""
    from training.data.ingest import load_public_dataset

    try:
        out = load_public_dataset(settings_of(ctx))
    except (SharedDataMissing, ValueError) as err:
        fail(err)
    console.print({"adapter_rejected": out.rejected_counts(), "notes": out.notes})


@data_app.command("validate")
def data_validate(ctx: typer.Context) -> None:
    """Validate raw tables: curated rows continue, bad rows are quarantined with the reason."""
    from training.data.ingest import print_report, validate_dataset

    try:
        report = validate_dataset(settings_of(ctx))
    except (ContractError, FileNotFoundError) as err:
        fail(err)
    print_report(report, console)
    console.print(f"quarantine: {settings_of(ctx).quarantine_dir}")


@features_app.command("build")
def features_build(ctx: typer.Context) -> None:
    """Compute point-in-time member feature snapshots into the offline store."""
    require_dataset(settings_of(ctx))
    from training.featurize import build_feature_tables

    try:
        console.print(build_feature_tables(settings_of(ctx)))
    except FileNotFoundError as err:
        fail(err)


@features_app.command("apply")
def features_apply(ctx: typer.Context) -> None:
    """Register entities, views and services in the Feast registry of the active profile."""
    from features.store import apply

    settings = settings_of(ctx)
    apply(settings)
    project = f"{settings.feast_project}_{settings.dataset}"
    console.print(f"applied feature repo to project {project} ({settings.profile.value})")


@features_app.command("materialize")
def features_materialize(ctx: typer.Context) -> None:
    """Load the latest feature values (as of the dataset's end) into the online store."""
    require_dataset(settings_of(ctx))
    from features.store import materialize
    from kernel.curated import dataset_end

    end = dataset_end(settings_of(ctx))
    materialize(settings_of(ctx), end)
    console.print(f"online store loaded with the latest feature values as of {end}")


@features_app.command("show")
def features_show(ctx: typer.Context, n: int = 3, member: list[str] = typer.Option(None)) -> None:
    """Print online features for a few members (as the decision service would read them)."""
    require_dataset(settings_of(ctx))
    from features.store import get_store, online_features
    from kernel.curated import dataset_end, load_curated

    ids = member or load_curated(settings_of(ctx), "members")["member_id"].head(n).tolist()
    end = dataset_end(settings_of(ctx))
    df = online_features(get_store(settings_of(ctx)), ids, int(end.timestamp()))
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        console.print(df.set_index("member_id").T.to_string())
