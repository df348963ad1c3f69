"""Raw tables -> contracts -> curated tables, with every rejected row quarantined and counted."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from kernel.contracts import NATURAL_KEYS, ContractError, validate
from kernel.curated import read_meta, write_meta
from kernel.settings import Settings
from training.data.adapters import ADAPTERS, AdapterOutput, SharedDataMissing
from training.data.importer import complete_tables, import_tables, source_tables
from training.data.mapping import Mapping, MappingError, load_mapping
from training.data.simulator import SimConfig, simulate

# (table, column) -> (parent table, parent key): rows pointing at unknown parents are quarantined
REFERENCES = {
    ("transactions", "member_id"): ("members", "member_id"),
    ("transactions", "item_id"): ("items", "item_id"),
    ("exposures", "member_id"): ("members", "member_id"),
    ("exposures", "offer_id"): ("offers", "offer_id"),
    ("responses", "exposure_id"): ("exposures", "exposure_id"),
    ("engagement", "member_id"): ("members", "member_id"),
    ("points_ledger", "member_id"): ("members", "member_id"),
}
BATCH_COLUMN = "batch_id"
# validate parents before children
ORDER = ["members", "items", "offers", "transactions", "exposures", "responses", "engagement", "points_ledger"]


def simulate_dataset(
    settings: Settings, n_members: int, seed: int | None = None, progress: bool = True, **config
) -> dict:
    """A simulated programme as the dataset's raw tables and ground truth; ``config``: other
    :class:`SimConfig` fields (e.g. ``campaign_offsets``, the randomised campaigns it has run)."""
    cfg = SimConfig(n_members=n_members, seed=settings.seed if seed is None else seed, **config)
    shutil.rmtree(settings.raw_dir, ignore_errors=True)  # no batches of an earlier import mix in
    write_batches(settings, [])
    counts = simulate(cfg, settings.dataset_dir, progress=progress)
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


def _raw_parts(settings: Settings, table: str) -> pd.DataFrame:
    """Every raw batch of ``table`` in import order, each row tagged with its batch."""
    parts = []
    single = settings.raw_dir / f"{table}.parquet"
    if single.exists():  # simulator and public adapters: one batch, named after the source
        parts.append(pd.read_parquet(single).assign(**{BATCH_COLUMN: "initial"}))
    for path in sorted((settings.raw_dir / table).glob("b*.parquet")):
        parts.append(pd.read_parquet(path).assign(**{BATCH_COLUMN: path.stem}))
    if not parts:
        raise ContractError(f"{table}: raw data missing in {settings.raw_dir}: run `loyalty-ml data import` first")
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def deduplicate(table: str, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, int]]]:
    """Rows whose natural key an earlier batch holds. Same content: skipped. Other content:
    quarantined with the reason, the first kept. Members are versioned by
    ``consent_updated_at``: a newer version replaces the older (counted as ``updated``), two
    versions of the same moment conflict. Returns (rows kept, conflicts, counts per batch)."""
    counts: dict[str, dict[str, int]] = {}
    if df.empty or df[BATCH_COLUMN].nunique() < 2:
        return df, df.iloc[:0], counts
    content = [c for c in df.columns if c != BATCH_COLUMN]
    key = [c for c in (NATURAL_KEYS[table] or content) if c in df.columns]
    order = df[BATCH_COLUMN].rank(method="dense").astype(int).to_numpy()
    k = pd.util.hash_pandas_object(df[key].astype("string"), index=False).to_numpy()
    h = pd.util.hash_pandas_object(df[content].astype("string"), index=False).to_numpy()
    frame = pd.DataFrame({"k": k, "h": h, "order": order, "row": np.arange(len(df))})
    if table == "members":  # the newest version wins; among equals, the first imported
        frame["t"] = df["consent_updated_at"].to_numpy()
        ranked = frame.sort_values(["k", "t", "order", "row"], ascending=[True, False, True, True])
    else:
        ranked = frame.sort_values(["k", "order", "row"])
    winner = ranked.drop_duplicates("k").set_index("k")
    w_order, w_hash = frame["k"].map(winner["order"]).to_numpy(), frame["k"].map(winner["h"]).to_numpy()
    w_row = frame["k"].map(winner["row"]).to_numpy()
    # rows of the winner's own batch stay (duplicates inside one batch are the contract's to judge)
    same_batch = order == w_order
    same = ~same_batch & (h == w_hash)
    other = ~same_batch & ~same
    updated = np.zeros(len(df), dtype=bool)
    if table == "members":
        t = frame["t"].to_numpy()
        updated = other & (t < t[w_row])  # an older version, replaced by the winner
    conflicts_mask = other & ~updated
    kept = df.loc[~(same | other)]
    conflicts = df.loc[conflicts_mask].astype("string")
    what = "/".join(key) if NATURAL_KEYS[table] else "the same row"
    conflicts["_reason"] = [
        f"{what} already imported in batch {df[BATCH_COLUMN].iat[r]} with other content; that one is kept"
        for r in w_row[conflicts_mask]
    ]
    for name, mask in (("duplicates_skipped", same), ("conflicts", conflicts_mask), ("updated", updated)):
        for batch, n in df.loc[mask, BATCH_COLUMN].value_counts().items():
            counts.setdefault(batch, {})[name] = int(n)
    return kept, conflicts, counts


# --------------------------------------------------------------------------- validation
VALIDATE_CHUNK_ROWS = 1_000_000  # rows validated at once: validation memory stays bounded


def _unique_columns(table: str) -> list[str]:
    from kernel.contracts import CONTRACTS

    return [name for name, col in CONTRACTS[table].to_schema().columns.items() if col.unique]


def _key_hash(values: pd.Series) -> np.ndarray:
    return pd.util.hash_pandas_object(values.astype("string"), index=False).to_numpy()


def validate_in_chunks(table: str, raw: pd.DataFrame, chunk_rows: int = VALIDATE_CHUNK_ROWS):
    """:func:`kernel.contracts.validate` over ``raw`` (tagged with its batch) in slices of
    ``chunk_rows``, yielding (valid, quarantined) per slice with ``_source_row`` counted over
    the whole table. A unique field the contract declares is held across slices too: a value an
    earlier slice already kept is quarantined as not unique (the first one stays)."""
    unique = _unique_columns(table)
    seen: dict[str, list[np.ndarray]] = {c: [] for c in unique}
    for first in range(0, max(len(raw), 1), chunk_rows):
        part = raw.iloc[first : first + chunk_rows].reset_index(drop=True)
        result = validate(table, part.drop(columns=BATCH_COLUMN))
        src = np.asarray(result.source_index, dtype=np.int64)
        valid = result.valid.assign(**{BATCH_COLUMN: part[BATCH_COLUMN].to_numpy()[src]})
        quarantined = result.quarantined
        quarantined = quarantined.assign(
            _source_row=quarantined["_source_row"] + first,
            **{BATCH_COLUMN: part[BATCH_COLUMN].to_numpy()[quarantined["_source_row"].to_numpy()]},
        )
        repeated = np.zeros(len(valid), dtype=bool)
        why = np.full(len(valid), "", dtype=object)
        for c in unique:
            h = _key_hash(valid[c])
            if seen[c]:
                again = np.isin(h, np.concatenate(seen[c])) & ~repeated
                why[again] = f"{c}: not unique (an earlier row holds the same value; that one is kept)"
                repeated |= again
            seen[c].append(h[~repeated])
        if repeated.any():
            dup = part.drop(columns=BATCH_COLUMN).iloc[src[repeated]].astype("string")
            dup.insert(0, "_source_row", src[repeated] + first)
            dup["_reason"] = pd.Series(why[repeated], index=dup.index, dtype="string")
            dup[BATCH_COLUMN] = part[BATCH_COLUMN].to_numpy()[src[repeated]]
            quarantined = pd.concat([quarantined, dup], ignore_index=True)
            valid = valid.loc[~repeated]
        yield valid.reset_index(drop=True), quarantined


def validate_dataset(settings: Settings) -> dict:
    """Validate every raw table (every batch, deduplicated by natural keys); write curated
    tables (each row with its batch), quarantine files and a report. One table at a time, in
    slices (:func:`validate_in_chunks`): memory holds one table's raw rows and the key columns
    its children reference, never the whole dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kernel.curated import text_for_null

    _clear(settings.curated_dir)
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    for stage in ("contract", "reference", "conflict"):  # adapter and import rejects stay: the load step wrote them
        for old in settings.quarantine_dir.glob(f"*__{stage}.parquet"):
            old.unlink()
    meta = read_meta(settings) if (settings.dataset_dir / "meta.json").exists() else {}
    imported = "mapping" in meta

    def read_deduplicated(table: str) -> tuple[pd.DataFrame, tuple[int, int, dict]] | None:
        if (
            imported
            and not (settings.raw_dir / table).exists()
            and not (settings.raw_dir / f"{table}.parquet").exists()
        ):
            return None  # built from the transactions below
        raw = _raw_parts(settings, table)
        kept, conflicts, counts = deduplicate(table, raw)
        _write_quarantine(settings, table, "conflict", conflicts)
        return kept.reset_index(drop=True), (len(raw), len(conflicts), counts)

    raw_tables: dict[str, pd.DataFrame] = {}
    dedup: dict[str, tuple[int, int, dict]] = {}
    notes: list[str] = []
    if imported:  # the mapping completes tables from one another: all are read first
        for table in ORDER:
            if (read := read_deduplicated(table)) is not None:
                raw_tables[table], dedup[table] = read
        mapping = Mapping.model_validate(meta["mapping"])
        completed, notes = complete_tables(raw_tables, mapping, keep=BATCH_COLUMN)
        for table, df in completed.items():
            batches = df[BATCH_COLUMN].fillna("derived") if BATCH_COLUMN in df else "derived"
            raw_tables[table] = df.assign(**{BATCH_COLUMN: batches})
    report: dict[str, dict] = {}
    keys: dict[tuple[str, str], np.ndarray] = {}  # (parent, key) -> hashes of its curated keys
    per_batch: dict[str, dict[str, dict[str, int]]] = {}
    firsts: list[pd.Timestamp] = []
    for table in ORDER:
        if table in raw_tables:
            raw = raw_tables.pop(table)
        else:
            raw, dedup[table] = read_deduplicated(table)
        n_read, n_conflicts, counts = dedup.get(table, (len(raw), 0, {}))
        n_valid = 0
        quarantined_parts, orphan_parts = [], []
        writer = None
        path = settings.curated_dir / f"{table}.parquet"
        try:
            for valid, quarantined in validate_in_chunks(table, raw, VALIDATE_CHUNK_ROWS):
                quarantined_parts.append(quarantined)
                for (child, col), (parent, key) in REFERENCES.items():
                    if child != table or (parent, key) not in keys:
                        continue
                    unknown = ~np.isin(_key_hash(valid[col]), keys[(parent, key)])
                    if unknown.any():
                        orphan_parts.append(valid.loc[unknown].assign(_reason=f"{col}: not in curated {parent}"))
                        valid = valid.loc[~unknown]
                valid = valid.reset_index(drop=True)
                frame = pa.Table.from_pandas(valid, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(path, text_for_null(frame.schema))
                writer.write_table(frame.cast(writer.schema))
                n_valid += len(valid)
                for parent, key in REFERENCES.values():  # what later tables are checked against
                    if parent == table:
                        keys.setdefault((parent, key), np.empty(0, np.uint64))
                        keys[(parent, key)] = np.concatenate([keys[(parent, key)], _key_hash(valid[key])])
                first_col = {"members": "join_date", "transactions": "ts"}.get(table)
                if first_col and valid[first_col].notna().any():
                    firsts.append(valid[first_col].min())
                for batch, n in valid[BATCH_COLUMN].value_counts().items():
                    entry = per_batch.setdefault(batch, {}).setdefault(table, {})
                    entry["curated"] = entry.get("curated", 0) + int(n)
        finally:
            if writer is not None:
                writer.close()
        quarantined = pd.concat(quarantined_parts, ignore_index=True)
        n_contract = len(quarantined)
        _write_quarantine(settings, table, "contract", quarantined)
        n_orphans = sum(len(o) for o in orphan_parts)
        if orphan_parts:
            _write_quarantine(settings, table, "reference", pd.concat(orphan_parts))
        n_loader = _count_quarantine(settings, table, ("adapter", "import_"))
        skipped = sum(c.get("duplicates_skipped", 0) for c in counts.values())
        updated = sum(c.get("updated", 0) for c in counts.values())
        report[table] = {
            "raw": n_read,
            "valid": n_valid,
            "duplicates_skipped": skipped,
            "updated": updated,
            "quarantined_conflict": n_conflicts,
            "quarantined_contract": n_contract,
            "quarantined_reference": n_orphans,
            "rejected_by_adapter": n_loader,
            "reasons": _top_reasons(quarantined, orphan_parts),
        }
        # the no-silent-drop invariant: every row read is kept, skipped as a duplicate, replaced, or quarantined
        derived = int((raw[BATCH_COLUMN] == "derived").sum())  # rows built from the transactions, none read
        if n_read + derived != len(raw) + skipped + updated + n_conflicts and table in dedup:
            raise ContractError(f"{table}: rows lost in deduplication")
        if len(raw) != n_valid + n_contract + n_orphans:
            raise ContractError(f"{table}: rows lost in validation")
        for batch, c in counts.items():
            per_batch.setdefault(batch, {})[table] = c | per_batch.get(batch, {}).get(table, {})
        bad = pd.concat([quarantined[[BATCH_COLUMN]]] + [o[[BATCH_COLUMN]] for o in orphan_parts])
        for batch, n in bad[BATCH_COLUMN].value_counts().items():
            per_batch.setdefault(batch, {}).setdefault(table, {})["quarantined"] = int(n)
        del raw, quarantined, quarantined_parts, orphan_parts
    (settings.dataset_dir / "validation_report.json").write_text(json.dumps(report, indent=2))
    if imported:
        write_batches(settings, [b | {"validated": per_batch.get(b["batch_id"], {})} for b in read_batches(settings)])
    if meta:  # the programme's first data: the service refuses event times before it
        update = {"start": min(firsts)} if firsts else {}
        if notes:
            update["notes"] = list(dict.fromkeys([*meta.get("notes", []), *notes]))
        write_meta(settings, read_meta(settings) | update)
    return report


def _count_quarantine(settings: Settings, table: str, stages: tuple[str, ...]) -> int:
    n = 0
    for path in settings.quarantine_dir.glob(f"{table}__*.parquet"):
        if path.stem.split("__", 1)[1].startswith(stages):
            n += len(pd.read_parquet(path, columns=["_reason"]))
    return n


def _top_reasons(quarantined: pd.DataFrame, orphans: list[pd.DataFrame], top: int = 5) -> dict[str, int]:
    reasons = pd.concat([quarantined.get("_reason", pd.Series(dtype=str))] + [o["_reason"] for o in orphans])
    return {str(k): int(v) for k, v in reasons.value_counts().head(top).items()}


def print_report(report: dict, console: Console | None = None) -> None:
    table = Table(title="data contracts")
    for col in ("table", "raw", "valid", "quarantined", "adapter rejects"):
        table.add_column(col, justify="right" if col != "table" else "left")
    for name, r in report.items():
        table.add_row(
            name,
            str(r["raw"]),
            str(r["valid"]),
            str(r["quarantined_contract"] + r["quarantined_reference"]),
            str(r["rejected_by_adapter"]),
        )
    (console or Console()).print(table)
