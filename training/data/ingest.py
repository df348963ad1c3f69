"""Raw data in: a simulated programme, a public data set or a retailer's exports become the dataset's
raw batches (validation into curated tables: :mod:`training.data.validation`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from kernel.contracts import ContractError
from kernel.curated import read_meta, write_meta
from kernel.settings import Settings
from training.data.adapters import ADAPTERS, AdapterOutput, SharedDataMissing
from training.data.importer import import_tables, source_tables
from training.data.mapping import Mapping, MappingError, load_mapping
from training.data.simulator import SimConfig, simulate

BATCH_COLUMN = "batch_id"


def simulate_dataset(
    settings: Settings, n_members: int, seed: int | None = None, progress: bool = True, **config
) -> dict:
    """A simulated programme as the dataset's raw tables and ground truth; ``config``: other
    :class:`SimConfig` fields (e.g. ``campaign_offsets``, the randomised campaigns it has run)."""
    cfg = SimConfig(n_members=n_members, seed=settings.seed if seed is None else seed, **config)
    shutil.rmtree(settings.raw_dir, ignore_errors=True)  # no batches of an earlier import mix in
    write_batches(settings, [])
    counts = simulate(cfg, settings.dataset_dir, progress=progress, workers=os.cpu_count() or 1)
    _clear(settings.quarantine_dir)
    write_meta(
        settings,
        {
            "source": "simulator",
            "end": cfg.end_ts,
            "cutoff": cfg.start_ts + pd.Timedelta(days=cfg.cutoff_day),
            "label_window_days": cfg.label_window_days,
            "n_members": n_members,
            "seed": cfg.seed,
        },
    )
    return counts


MAPPINGS = Path(__file__).parent / "mappings"  # public data sets that load through the generic import


def load_public_dataset(settings: Settings) -> AdapterOutput | dict:
    """Load the public data set named by ``settings.dataset``: through its mapping file where
    one exists (the generic import), else through its adapter."""
    mapping = MAPPINGS / f"{settings.dataset}.yaml"
    if mapping.exists():
        folder = settings.shared_data_dir / settings.dataset
        if not folder.is_dir():
            raise SharedDataMissing(f"{folder} not found: put the public data under ../shared/data (see its README)")
        return import_dataset(settings, folder, mapping)
    if settings.dataset not in ADAPTERS:
        known = sorted([*ADAPTERS, *(p.stem for p in MAPPINGS.glob("*.yaml"))])
        raise ValueError(
            f"dataset {settings.dataset!r} is not a public data set ({', '.join(known)}); "
            "import your own with `loyalty-ml data import`"
        )
    out = ADAPTERS[settings.dataset](settings.shared_data_dir)
    for folder in (settings.raw_dir, settings.quarantine_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    write_batches(settings, [])
    for table, df in out.tables.items():
        df.to_parquet(settings.raw_dir / f"{table}.parquet", index=False)
    for table, df in out.rejected.items():
        _write_quarantine(settings, table, "adapter", df)
    write_meta(
        settings,
        {"source": settings.dataset, "end": out.end, "notes": out.notes, "adapter_rejected": out.rejected_counts()},
    )
    return out


def _clear(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()


def _write_quarantine(settings: Settings, table: str, stage: str, df: pd.DataFrame) -> None:
    if df.empty:
        return
    out = df.astype("string").assign(_stage=stage)
    out.to_parquet(settings.quarantine_dir / f"{table}__{stage}.parquet", index=False)


# --------------------------------------------------------------------------- import through a mapping
def import_dataset(
    settings: Settings, source: str | Path, mapping_path: Path | Mapping | None = None, increment: bool = False
) -> dict:
    """Import a retailer's export as one batch: the first (replacing the dataset's raw data)
    or, with ``increment``, the next. Returns the batch record (``skipped``: the same content
    was imported before, nothing added). ``mapping_path``: a mapping file, or a mapping already read."""
    if isinstance(mapping_path, Mapping):
        mapping = mapping_path
    else:
        mapping = load_mapping(mapping_path, None if mapping_path else source_tables(source))
    batches = read_batches(settings)
    if increment and not batches:
        raise MappingError(
            f"dataset {settings.dataset!r} has no imported batch to add to: import it once without --increment"
        )
    out = import_tables(source, mapping)
    digest = _content_hash(out.tables)
    if increment:
        same = _imported_before(batches, digest)
        if same is not None:
            return same
    else:
        for folder in (settings.raw_dir, settings.quarantine_dir, settings.curated_dir):
            shutil.rmtree(folder, ignore_errors=True)
        batches = []
    record = _write_batch(settings, batches, out.tables, _safe_source(source), digest, out.rejected, out.notes)
    previous = read_meta(settings) if increment else {}
    end = max(pd.Timestamp(previous["end"]), out.end) if previous.get("end") else out.end
    write_meta(
        settings,
        {
            **previous,
            "source": "import",
            "end": end,
            "currency": mapping.currency,
            "notes": out.notes,
            "mapping": mapping.model_dump(mode="json", by_alias=True, exclude_none=True),
        },
    )
    return record


def _imported_before(batches: list[dict], digest: str) -> dict | None:
    """The record of a batch with the same content, marked ``skipped``; None if there is none."""
    same = next((b for b in batches if b["content_hash"] == digest), None)
    return None if same is None else same | {"skipped": True}


def _write_batch(
    settings: Settings,
    batches: list[dict],
    tables: dict[str, pd.DataFrame],
    source: str,
    digest: str,
    rejected: dict[str, pd.DataFrame] | None = None,
    notes: list[str] | None = None,
) -> dict:
    """Write ``tables`` as the raw batch after ``batches`` (its rows ``rejected`` on import
    quarantined under its id) and append its record to the batch list; return the record."""
    batch_id = f"b{len(batches) + 1:04d}"
    for table, df in tables.items():
        (settings.raw_dir / table).mkdir(parents=True, exist_ok=True)
        df.to_parquet(settings.raw_dir / table / f"{batch_id}.parquet", index=False)
    rejected = rejected or {}
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    for table, df in rejected.items():
        _write_quarantine(settings, table, f"import_{batch_id}", df.assign(**{BATCH_COLUMN: batch_id}))
    record = {
        "batch_id": batch_id,
        "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "content_hash": digest,
        "rows": {t: len(df) for t, df in tables.items()},
        "rejected_on_import": {t: len(df) for t, df in rejected.items() if len(df)},
        "notes": notes or [],
    }
    write_batches(settings, [*batches, record])
    return record


INBOX_DONE = "imported"  # inbox/<export>/ moves to inbox/imported/<export>/ once imported
CONTRACT_EXPORT = "export.json"  # an export already in the contracts' shape (the simulator's days)


def add_batch(settings: Settings, tables: dict[str, pd.DataFrame], source: str, end: pd.Timestamp) -> dict:
    """Add rows already in the contracts' shape as the dataset's next raw batch (validation judges
    them like any other); the same content twice is skipped. Returns the batch record."""
    tables = {t: df for t, df in tables.items() if len(df)}
    batches = read_batches(settings)
    digest = _content_hash(tables)
    same = _imported_before(batches, digest)
    if same is not None:
        return same
    record = _write_batch(settings, batches, tables, source, digest)
    meta = read_meta(settings)
    write_meta(settings, meta | {"end": max(pd.Timestamp(meta["end"]), pd.Timestamp(end))})
    return record


def pending_exports(settings: Settings) -> list[Path]:
    """Export folders waiting in ``<dataset>/inbox/`` (oldest name first)."""
    inbox = settings.dataset_dir / "inbox"
    return sorted(p for p in inbox.iterdir() if p.is_dir() and p.name != INBOX_DONE) if inbox.is_dir() else []


def import_pending(settings: Settings) -> list[dict]:
    """Import every export waiting in the inbox as the next batch, oldest first, and move it to
    ``inbox/imported/``: through the dataset's own mapping (its first import's), or as contract
    rows where the export says so (:data:`CONTRACT_EXPORT`). Safe to repeat: an export imported
    before (same content) is skipped, a moved one is not seen again."""
    records = []
    for folder in pending_exports(settings):
        marker = folder / CONTRACT_EXPORT
        if marker.exists():
            info = json.loads(marker.read_text())
            tables = {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}
            record = add_batch(settings, tables, f"inbox/{folder.name}", pd.Timestamp(info["end"]))
        else:
            meta = read_meta(settings)
            if "mapping" not in meta:
                raise MappingError(
                    f"inbox/{folder.name}: dataset {settings.dataset!r} has no mapping to read it with:"
                    " import its first export with `loyalty-ml data import`"
                )
            record = import_dataset(settings, folder, Mapping.model_validate(meta["mapping"]), increment=True)
        done = folder.parent / INBOX_DONE / folder.name
        done.parent.mkdir(exist_ok=True)
        shutil.rmtree(done, ignore_errors=True)
        folder.rename(done)
        records.append(record | {"export": folder.name})
    return records


def advance_simulation(settings: Settings, days: int, sent: pd.DataFrame) -> dict:
    """The simulated world's next ``days`` (:func:`training.data.advance.advance_world`), written
    to the inbox as one export, as a retailer's daily export would arrive."""
    from training.data.advance import advance_world

    members = _raw_parts(settings, "members")
    out = advance_world(settings.dataset_dir, days, sent, members)
    folder = settings.dataset_dir / "inbox" / f"sim-{out['start']:%Y%m%d}-{days}d"
    folder.mkdir(parents=True, exist_ok=True)
    for table, df in out["tables"].items():
        df.to_parquet(folder / f"{table}.parquet", index=False)
    (folder / CONTRACT_EXPORT).write_text(json.dumps({"start": str(out["start"]), "end": str(out["end"])}))
    return {"export": folder.name, "start": out["start"], "end": out["end"]} | {
        f"rows_{t}": len(df) for t, df in out["tables"].items()
    }


def _content_hash(tables: dict[str, pd.DataFrame]) -> str:
    h = hashlib.sha256()
    for table in sorted(tables):
        df = tables[table]
        h.update(table.encode())
        h.update(",".join(df.columns).encode())
        if len(df):
            h.update(pd.util.hash_pandas_object(df.astype("string"), index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _safe_source(source: str | Path) -> str:
    """The source as recorded: a database URL without its password."""
    text = str(source)
    if "://" in text:
        import sqlalchemy as sa

        return sa.make_url(text).render_as_string(hide_password=True)
    return str(Path(text).resolve())


def read_batches(settings: Settings) -> list[dict]:
    path = settings.dataset_dir / "batches.json"
    return json.loads(path.read_text()) if path.exists() else []


def write_batches(settings: Settings, batches: list[dict]) -> None:
    settings.dataset_dir.mkdir(parents=True, exist_ok=True)
    (settings.dataset_dir / "batches.json").write_text(json.dumps(batches, indent=2, default=str))


def raw_files(settings: Settings, table: str) -> list[tuple[str, Path]]:
    """(batch, parquet file) of every raw batch of ``table`` in import order: the one file the
    simulator and the public adapters write ("initial"), then the imported batches."""
    single = settings.raw_dir / f"{table}.parquet"
    files = [("initial", single)] if single.exists() else []
    return files + [(path.stem, path) for path in sorted((settings.raw_dir / table).glob("b*.parquet"))]


def raw_missing(settings: Settings, table: str) -> ContractError:
    return ContractError(f"{table}: raw data missing in {settings.raw_dir}: run `loyalty-ml data import` first")


def _raw_parts(settings: Settings, table: str) -> pd.DataFrame:
    """Every raw batch of ``table`` in import order, each row tagged with its batch."""
    parts = [pd.read_parquet(path).assign(**{BATCH_COLUMN: batch}) for batch, path in raw_files(settings, table)]
    if not parts:
        raise raw_missing(settings, table)
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
