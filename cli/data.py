"""``loyalty-ml data ...`` and ``loyalty-ml features ...``: raw data to curated tables to features."""

from __future__ import annotations

from pathlib import Path

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
def data_simulate(
    ctx: typer.Context,
    members: int = typer.Option(10_000, min=100),
    seed: int | None = None,
    advance: int | None = typer.Option(
        None,
        min=1,
        help="continue the world by DAYS: the same members answer the offers the service sent"
        " (its decision log and impressions); the days land in the inbox for `loyalty-ml daily`",
    ),
) -> None:
    """Simulate members (with ground truth) into the ``simulated`` dataset, or continue it."""
    from training.data.ingest import advance_simulation, simulate_dataset

    settings: Settings = settings_of(ctx).model_copy(update={"dataset": "simulated"})
    if advance is None:
        counts = simulate_dataset(settings, members, seed)
        console.print({k: v for k, v in counts.items()})
        return
    from training.data.advance import WorldError, world_end

    try:
        start = world_end(settings.ground_truth_dir)
        sent = logged_sends(settings, start, start + pd.Timedelta(days=advance))
        out = advance_simulation(settings, advance, sent)
    except WorldError as err:
        fail(err)
    console.print(out | {"offers_sent": int(sent["treatment"].sum()), "held_out": int((~sent["treatment"]).sum())})


def logged_sends(settings: Settings, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The service's offers decided for [start, end): sent (an impression was reported) or held out
    (its control group), as exposures of the simulated members (the world knows who its
    pseudonymised members are: it holds the key)."""
    from kernel.constants import SERVICE_CAMPAIGN
    from kernel.curated import load_curated
    from serving.state import ServingState, StateUnavailable

    try:
        state = ServingState(settings.serving_state_url, settings.pseudonym_key, settings.serving_state_prefix)
        rows = state.sent_offers(int(start.timestamp()), int(end.timestamp()))
    except StateUnavailable as err:
        fail(RuntimeError(f"serving state unreadable ({err}): the world cannot know what was sent"))
    ids = load_curated(settings, "members", columns=["member_id"])["member_id"]
    member_of = dict(zip(ids.map(state.member_key), ids, strict=True))
    rows["member_id"] = rows["member_key"].map(member_of)
    rows = rows[rows["member_id"].notna()]  # members the world does not have (test calls, typos)
    return pd.DataFrame(
        {
            "exposure_id": "S" + rows["decision_id"].astype(str),
            "member_id": rows["member_id"],
            "offer_id": rows["offer_id"],
            "ts": pd.to_datetime(rows["ts"], unit="s"),
            "channel": rows["channel"],
            "treatment": rows["treatment"].astype(bool),
            "propensity": rows["propensity"].astype(float),
            "campaign_id": SERVICE_CAMPAIGN,
        }
    ).reset_index(drop=True)


@data_app.command("load")
def data_load(ctx: typer.Context) -> None:
    """Map the public data set named by --dataset into the contracts' raw tables."""
    from training.data.ingest import load_public_dataset

    try:
        out = load_public_dataset(settings_of(ctx))
    except (SharedDataMissing, ValueError) as err:
        fail(err)
    if isinstance(out, dict):  # through its mapping: one imported batch
        console.print({"rows": out["rows"], "rejected_on_import": out["rejected_on_import"], "notes": out["notes"]})
    else:
        console.print({"adapter_rejected": out.rejected_counts(), "notes": out.notes})


@data_app.command("import")
def data_import(
    ctx: typer.Context,
    source: str = typer.Option(..., help="a folder of CSV / Parquet / JSON-lines files, or a SQLAlchemy URL"),
    mapping: Path | None = typer.Option(None, help="mapping YAML (`loyalty-ml data template DIR` writes one)"),
    dataset: str | None = typer.Option(None, help="dataset name ([a-z0-9_]+); default: the global --dataset"),
    increment: bool = typer.Option(False, help="add a batch to the dataset instead of replacing its data"),
) -> None:
    """Import a retailer's own tables through a mapping, as one batch; then `data validate`."""
    from training.data.ingest import import_dataset
    from training.data.mapping import MappingError, validate_dataset_name

    settings = settings_of(ctx)
    try:
        if dataset is not None:
            settings = settings.model_copy(update={"dataset": validate_dataset_name(dataset)})
        if settings.dataset == "simulated":
            raise MappingError("name the dataset: --dataset NAME (`simulated` is the simulator's)")
        record = import_dataset(settings, source, mapping, increment)
    except (MappingError, ContractError) as err:
        fail(err)
    if record.get("skipped"):
        console.print(f"batch already imported as {record['batch_id']} (same content): nothing added")
        return
    console.print(f"dataset {settings.dataset}: batch {record['batch_id']} imported")
    console.print({"rows": record["rows"], "rejected_on_import": record["rejected_on_import"]})
    for note in record["notes"]:
        console.print(f"note: {note}")
    console.print(f"next: loyalty-ml --dataset {settings.dataset} data validate")


@data_app.command("template")
def data_template(folder: Path) -> None:
    """Write one header-only CSV per contract table and a commented example mapping."""
    from kernel.contracts import CONTRACTS
    from training.data.mapping import TEMPLATE

    folder.mkdir(parents=True, exist_ok=True)
    for table, contract in CONTRACTS.items():
        (folder / f"{table}.csv").write_text(",".join(contract.to_schema().columns) + "\n")
    (folder / "mapping.yaml").write_text(TEMPLATE)
    console.print(f"wrote {len(CONTRACTS)} header-only CSVs and mapping.yaml to {folder}")


@data_app.command("batches")
def data_batches(ctx: typer.Context) -> None:
    """List the imported batches with their row, duplicate and quarantine counts."""
    from rich.table import Table

    from training.data.ingest import read_batches

    settings = require_dataset(settings_of(ctx))
    batches = read_batches(settings)
    if not batches:
        console.print(f"dataset {settings.dataset!r} has no imported batches (its source: simulator or adapter)")
        return
    table = Table(title=f"batches of {settings.dataset}")
    for col in (
        "batch",
        "imported at",
        "rows",
        "rejected on import",
        "curated",
        "duplicates",
        "updated",
        "quarantined",
    ):
        table.add_column(col, justify="left" if col in ("batch", "imported at") else "right")
    for b in batches:
        v = b.get("validated", {})

        def total(name: str, counts: dict = v) -> str:
            return str(sum(c.get(name, 0) for c in counts.values())) if counts else "-"

        quarantined = sum(c.get("quarantined", 0) + c.get("conflicts", 0) for c in v.values()) if v else "-"
        table.add_row(
            b["batch_id"],
            b["imported_at"],
            str(sum(b["rows"].values())),
            str(sum(b["rejected_on_import"].values())),
            total("curated"),
            total("duplicates_skipped"),
            total("updated"),
            str(quarantined),
        )
    console.print(table)


@data_app.command("validate")
def data_validate(ctx: typer.Context) -> None:
    """Validate raw tables: curated rows continue, bad rows are quarantined with the reason."""
    from training.data.validation import print_report, validate_dataset

    try:
        report = validate_dataset(settings_of(ctx))
    except (ContractError, FileNotFoundError, ValueError) as err:
        fail(err)
    print_report(report, console)
    console.print(f"quarantine: {settings_of(ctx).quarantine_dir}")


@features_app.command("build")
def features_build(
    ctx: typer.Context,
    engine: str = typer.Option("local", help="local | dask: member partitions on the Dask cluster's workers"),
) -> None:
    """Compute point-in-time member feature snapshots into the offline store."""
    require_dataset(settings_of(ctx))
    if engine not in ("local", "dask"):
        fail(ValueError(f"--engine must be 'local' or 'dask', not {engine!r}"))
    from training.featurize import build_feature_tables

    try:
        console.print(build_feature_tables(settings_of(ctx), engine=engine))
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
