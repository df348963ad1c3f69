"""Raw batches -> contracts -> curated tables, streamed: each table is read, deduplicated
and validated a slice at a time, so memory holds one slice and 64-bit key hashes, never a
table's rows. Every row read is kept, skipped as a duplicate, replaced, or quarantined."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from kernel.contracts import CONTRACTS, NATURAL_KEYS, ContractError, validate
from kernel.curated import read_meta, text_for_null, write_meta
from kernel.settings import Settings
from training.data.importer import complete_tables
from training.data.ingest import BATCH_COLUMN, raw_files, raw_missing, read_batches, write_batches
from training.data.mapping import Mapping

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
# validate parents before children
ORDER = ["members", "items", "offers", "transactions", "exposures", "responses", "engagement", "points_ledger"]
VALIDATE_CHUNK_ROWS = 1_000_000  # rows read and validated at once: validation memory stays bounded


# --------------------------------------------------------------------------- reading
@dataclass
class RawRows:
    """One table's raw rows in import order, each tagged with its batch: parquet batch files
    read a slice at a time, or a frame already in memory (a mapped import, completed from the
    other tables). Slices carry the union of every batch's columns (absent ones null), as one
    concatenated table would."""

    files: list[tuple[str, Path]] = field(default_factory=list)  # (batch, parquet file)
    frame: pd.DataFrame | None = None

    def __len__(self) -> int:
        if self.frame is not None:
            return len(self.frame)
        return sum(pq.ParquetFile(path).metadata.num_rows for _, path in self.files)

    @property
    def batches(self) -> list[str]:
        """The batches in import order (the order that decides which duplicate is first)."""
        if self.frame is not None:
            return list(dict.fromkeys(self.frame[BATCH_COLUMN].astype(str)))
        return [batch for batch, _ in self.files]

    def _columns(self) -> list[str]:
        names: dict[str, None] = {}
        for _, path in self.files:
            names.update(dict.fromkeys(pq.read_schema(path).names))
        names.pop(BATCH_COLUMN, None)
        return [*names, BATCH_COLUMN]

    def slices(self, rows: int) -> Iterator[pd.DataFrame]:
        """The rows, at most ``rows`` at a time (at least one slice, empty for an empty table)."""
        if self.frame is not None:
            for first in range(0, max(len(self.frame), 1), rows):
                yield self.frame.iloc[first : first + rows].reset_index(drop=True)
            return
        columns, yielded = self._columns(), False
        for batch, path in self.files:
            for record_batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
                df = record_batch.to_pandas().assign(**{BATCH_COLUMN: batch})
                yielded = True
                yield df.reindex(columns=columns)
        if not yielded:
            empty = pq.read_schema(self.files[0][1]).empty_table().to_pandas()
            yield empty.assign(**{BATCH_COLUMN: pd.Series(dtype="string")}).reindex(columns=columns)


class HashSet:
    """64-bit hashes kept sorted: membership by binary search; an insert merges two sorted
    runs (a stable sort of a concatenation of sorted runs is a merge), so a table's keys are
    checked slice by slice in about linear time instead of re-sorting everything per slice."""

    def __init__(self) -> None:
        self._sorted = np.empty(0, np.uint64)

    def __len__(self) -> int:
        return len(self._sorted)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        if not len(self._sorted):
            return np.zeros(len(hashes), dtype=bool)
        at = np.minimum(np.searchsorted(self._sorted, hashes), len(self._sorted) - 1)
        return self._sorted[at] == hashes

    def add(self, hashes: np.ndarray) -> None:
        self._sorted = np.sort(np.concatenate([self._sorted, np.sort(hashes)]), kind="stable")


def key_hash(values: pd.Series | pd.DataFrame) -> np.ndarray:
    """Hashes of values (of rows, for a frame) as text: the same key hashes alike whatever
    dtype a batch gave it."""
    return pd.util.hash_pandas_object(values.astype("string"), index=False).to_numpy()


# --------------------------------------------------------------------------- deduplication
KEEP, SAME, CONFLICT, UPDATED = 0, 1, 2, 3  # what becomes of a row whose natural key repeats


def _row_hashes(table: str, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(natural-key hash, content hash) of each row; a table without a natural key is keyed
    by its content."""
    content = [c for c in df.columns if c != BATCH_COLUMN]
    key = [c for c in (NATURAL_KEYS[table] or content) if c in df.columns]
    k = key_hash(df[key])
    return k, k if key == content else key_hash(df[content])


def _version_time(df: pd.DataFrame) -> np.ndarray:
    """The members' ``consent_updated_at`` as UTC instants (raw text or zones alike); one
    that cannot be read counts as the oldest (the contract quarantines it anyway)."""
    t = pd.to_datetime(df["consent_updated_at"], errors="coerce", utc=True, format="mixed")
    return t.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def decide_duplicates(
    k: np.ndarray, h: np.ndarray, order: np.ndarray, t: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """What becomes of each row, given its key hash ``k``, content hash ``h`` and batch
    ``order`` (``t``: the members' version time, newest wins). The winner of a key is its
    newest version, then its earliest batch, then its first row. Rows of the winner's own
    batch stay (duplicates inside one batch are the contract's to judge); a row of another
    batch is SAME (identical content, skipped), UPDATED (an older member version) or CONFLICT.
    Returns (status per row, the winner's batch order per row)."""
    rows = np.arange(len(k))
    if t is None:
        by = np.lexsort((rows, order, k))
    else:
        ns = t.astype("datetime64[ns]").view(np.int64)
        newest_first = np.where(np.isnat(t), np.iinfo(np.int64).max, -ns)  # no time: oldest
        by = np.lexsort((rows, order, newest_first, k))
    sorted_k = k[by]
    starts = np.r_[True, sorted_k[1:] != sorted_k[:-1]]
    winner = np.empty(len(k), dtype=np.int64)
    winner[by] = by[starts][np.cumsum(starts) - 1]
    w_order = order[winner]
    other_batch = order != w_order
    same = other_batch & (h == h[winner])
    status = np.full(len(k), KEEP, dtype=np.int8)
    status[same] = SAME
    other = other_batch & ~same
    status[other] = CONFLICT
    if t is not None:
        status[other & (t < t[winner])] = UPDATED  # an older version, replaced by the winner
    return status, w_order


def _conflict_rows(df: pd.DataFrame, table: str, winner_batches: np.ndarray) -> pd.DataFrame:
    conflicts = df.astype("string")
    what = "/".join(NATURAL_KEYS[table]) if NATURAL_KEYS[table] else "the same row"
    conflicts["_reason"] = pd.Series(
        [f"{what} already imported in batch {b} with other content; that one is kept" for b in winner_batches],
        index=conflicts.index,
        dtype="string",
    )
    return conflicts


def _count_by_batch(counts: dict, status: np.ndarray, batches: np.ndarray) -> None:
    for name, code in (("duplicates_skipped", SAME), ("conflicts", CONFLICT), ("updated", UPDATED)):
        for batch, n in Counter(batches[status == code]).items():
            counts.setdefault(str(batch), {})[name] = counts.get(str(batch), {}).get(name, 0) + int(n)


@dataclass
class Deduplicated:
    """A table's rows after deduplication, streamed: ``kept_slices`` yields the kept rows
    and hands the conflicting ones to ``on_conflict``."""

    raw: RawRows
    status: np.ndarray | None  # per raw row; None: one batch, nothing to deduplicate
    winner_batch: np.ndarray | None
    counts: dict[str, dict[str, int]]
    n_read: int  # raw rows read
    derived: int = 0  # rows a mapped import built from other tables (none read)

    @classmethod
    def plan(cls, table: str, raw: RawRows, rows: int) -> Deduplicated:
        """First pass: hash every row (a slice at a time) and decide its fate."""
        batches = raw.batches
        if len(set(batches)) < 2:
            return cls(raw, None, None, {}, len(raw))
        index = {b: i for i, b in enumerate(batches)}
        ks, hs, orders, ts = [], [], [], []
        for df in raw.slices(rows):
            k, h = _row_hashes(table, df)
            ks.append(k)
            hs.append(h)
            orders.append(df[BATCH_COLUMN].astype(str).map(index).to_numpy(np.int32))
            if table == "members":
                ts.append(_version_time(df))
        order = np.concatenate(orders)
        status, w_order = decide_duplicates(
            np.concatenate(ks), np.concatenate(hs), order, np.concatenate(ts) if ts else None
        )
        del ks, hs
        counts: dict[str, dict[str, int]] = {}
        _count_by_batch(counts, status, np.asarray(batches)[order])
        winner_batch = np.where(status == CONFLICT, w_order, -1).astype(np.int32)
        return cls(raw, status, winner_batch, counts, len(order))

    def kept_slices(self, table: str, rows: int, on_conflict) -> Iterator[pd.DataFrame]:
        if self.status is None:
            yield from self.raw.slices(rows)
            return
        names, first = np.asarray(self.raw.batches), 0
        for df in self.raw.slices(rows):
            status = self.status[first : first + len(df)]
            conflict = status == CONFLICT
            if conflict.any():
                winners = names[self.winner_batch[first : first + len(df)][conflict]]
                on_conflict(_conflict_rows(df.loc[conflict], table, winners))
            first += len(df)
            yield df.loc[status == KEEP].reset_index(drop=True)


def deduplicate(table: str, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, int]]]:
    """:class:`Deduplicated` over a table in memory. Returns (rows kept, conflicts
    quarantined with their reason, counts per batch)."""
    plan = Deduplicated.plan(table, RawRows(frame=df), max(len(df), 1))
    conflicts: list[pd.DataFrame] = []
    kept = pd.concat(list(plan.kept_slices(table, max(len(df), 1), conflicts.append)), ignore_index=True)
    return kept, pd.concat(conflicts) if conflicts else df.iloc[:0], plan.counts


# --------------------------------------------------------------------------- validation
def _unique_columns(table: str) -> list[str]:
    return [name for name, col in CONTRACTS[table].to_schema().columns.items() if col.unique]


def validate_in_chunks(table: str, slices: Iterable[pd.DataFrame]) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """:func:`kernel.contracts.validate` over raw slices (tagged with their batch), yielding
    (valid, quarantined) per slice with ``_source_row`` counted over the whole table. A unique
    field the contract declares is held across slices too: a value an earlier slice already
    kept is quarantined as not unique (the first one stays)."""
    seen = {c: HashSet() for c in _unique_columns(table)}
    first = 0
    for part in slices:
        result = validate(table, part.drop(columns=BATCH_COLUMN))
        src = np.asarray(result.source_index, dtype=np.int64)
        batch = part[BATCH_COLUMN].to_numpy()
        valid = result.valid.assign(**{BATCH_COLUMN: batch[src]})
        quarantined = result.quarantined
        quarantined = quarantined.assign(
            _source_row=quarantined["_source_row"] + first,
            **{BATCH_COLUMN: batch[quarantined["_source_row"].to_numpy()]},
        )
        repeated = np.zeros(len(valid), dtype=bool)
        why = np.full(len(valid), "", dtype=object)
        for c, kept in seen.items():
            h = key_hash(valid[c])
            again = kept.contains(h) & ~repeated
            why[again] = f"{c}: not unique (an earlier row holds the same value; that one is kept)"
            repeated |= again
            kept.add(h[~repeated])
        if repeated.any():
            dup = part.drop(columns=BATCH_COLUMN).iloc[src[repeated]].astype("string")
            dup.insert(0, "_source_row", src[repeated] + first)
            dup["_reason"] = pd.Series(why[repeated], index=dup.index, dtype="string")
            dup[BATCH_COLUMN] = batch[src[repeated]]
            quarantined = pd.concat([quarantined, dup], ignore_index=True)
            valid = valid.loc[~repeated]
        first += len(part)
        yield valid.reset_index(drop=True), quarantined


class QuarantineFile:
    """One table's quarantined rows of one stage, appended to ``<table>__<stage>.parquet`` as
    text as they come (no file when none), with their count, reasons and batches."""

    def __init__(self, folder: Path, table: str, stage: str) -> None:
        self.path = folder / f"{table}__{stage}.parquet"
        self.stage = stage
        self.rows = 0
        self.reasons: Counter = Counter()
        self.batches: Counter = Counter()
        self._writer: pq.ParquetWriter | None = None
        self._columns: list[str] = []

    def write(self, df: pd.DataFrame) -> None:
        if df.empty:
            return
        out = df.astype("string").assign(_stage=self.stage)
        if self._writer is None:
            self._columns = list(out.columns)
            schema = pa.schema([(c, pa.string()) for c in self._columns])
            self._writer = pq.ParquetWriter(self.path, schema)
        elif lost := sorted(set(out.columns) - set(self._columns)):  # every part of a stage has the same columns
            raise RuntimeError(f"{self.path.name}: columns {lost} would be lost")
        self._writer.write_table(
            pa.Table.from_pandas(out.reindex(columns=self._columns), self._writer.schema, preserve_index=False)
        )
        self.rows += len(df)
        if "_reason" in df:
            self.reasons.update(df["_reason"].astype(str).tolist())
        if BATCH_COLUMN in df:
            self.batches.update(df[BATCH_COLUMN].astype(str).tolist())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _raw_rows(settings: Settings, table: str) -> RawRows | None:
    files = raw_files(settings, table)
    return RawRows(files=files) if files else None


def _completed_import(settings: Settings, meta: dict, conflict_files: dict) -> tuple[dict, dict, list[str]]:
    """A mapped import's tables in memory, deduplicated and completed from one another (the
    mapping derives members and items from the transactions where the export has none)."""
    tables, read_counts = {}, {}
    for table in ORDER:
        raw = _raw_rows(settings, table)
        if raw is None:
            continue  # built from the transactions below
        df = pd.concat(list(raw.slices(VALIDATE_CHUNK_ROWS)), ignore_index=True)
        kept, conflicts, counts = deduplicate(table, df)
        conflict_files[table].write(conflicts)
        tables[table] = kept.reset_index(drop=True)
        read_counts[table] = (len(df), counts)
    completed, notes = complete_tables(tables, Mapping.model_validate(meta["mapping"]), keep=BATCH_COLUMN)
    for table, df in completed.items():
        batches = df[BATCH_COLUMN].fillna("derived") if BATCH_COLUMN in df else "derived"
        tables[table] = df.assign(**{BATCH_COLUMN: batches})
    return tables, read_counts, notes


def validate_dataset(settings: Settings) -> dict:
    """Validate every raw table (every batch, deduplicated by natural keys); write curated
    tables (each row with its batch), quarantine files and a report. A table at a time, a
    slice at a time: memory holds one slice, the key hashes of the table's own unique fields
    and the key hashes of the parents its children reference, never a table's rows (except
    a mapped import's, which its tables complete from one another in memory)."""
    settings.curated_dir.mkdir(parents=True, exist_ok=True)
    for old in settings.curated_dir.glob("*.parquet"):
        old.unlink()
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    for stage in ("contract", "reference", "conflict"):  # adapter and import rejects stay: the load step wrote them
        for old in settings.quarantine_dir.glob(f"*__{stage}.parquet"):
            old.unlink()
    meta = read_meta(settings) if (settings.dataset_dir / "meta.json").exists() else {}
    imported = "mapping" in meta
    conflict_files = {t: QuarantineFile(settings.quarantine_dir, t, "conflict") for t in ORDER}
    in_memory, imported_counts, notes = _completed_import(settings, meta, conflict_files) if imported else ({}, {}, [])
    report: dict[str, dict] = {}
    keys: dict[tuple[str, str], HashSet] = {}  # (parent, key) -> hashes of its curated keys
    per_batch: dict[str, dict[str, dict[str, int]]] = {}
    firsts: list[pd.Timestamp] = []
    try:
        for table in ORDER:
            if table in in_memory:
                frame = in_memory.pop(table)
                n_read, counts = imported_counts.get(table, (0, {}))
                derived = int((frame[BATCH_COLUMN] == "derived").sum())
                rows = Deduplicated(RawRows(frame=frame), None, None, counts, n_read, derived)
            elif (raw := _raw_rows(settings, table)) is not None:
                rows = Deduplicated.plan(table, raw, VALIDATE_CHUNK_ROWS)
            else:
                raise raw_missing(settings, table)
            report[table] = _validate_table(settings, table, rows, conflict_files[table], keys, per_batch, firsts)
    finally:
        for f in conflict_files.values():
            f.close()
    (settings.dataset_dir / "validation_report.json").write_text(json.dumps(report, indent=2))
    if imported:
        write_batches(settings, [b | {"validated": per_batch.get(b["batch_id"], {})} for b in read_batches(settings)])
    if meta:  # the programme's first data: the service refuses event times before it
        update = {"start": min(firsts)} if firsts else {}
        if notes:
            update["notes"] = list(dict.fromkeys([*meta.get("notes", []), *notes]))
        write_meta(settings, read_meta(settings) | update)
    return report


def _validate_table(
    settings: Settings,
    table: str,
    rows: Deduplicated,
    conflicts: QuarantineFile,
    keys: dict[tuple[str, str], HashSet],
    per_batch: dict,
    firsts: list[pd.Timestamp],
) -> dict:
    """Stream one table through its contract and its references into the curated file."""
    contract = QuarantineFile(settings.quarantine_dir, table, "contract")
    orphans = QuarantineFile(settings.quarantine_dir, table, "reference")
    parents = {(col, parent, key) for (child, col), (parent, key) in REFERENCES.items() if child == table}
    own_keys = {(parent, key) for parent, key in REFERENCES.values() if parent == table}
    first_col = {"members": "join_date", "transactions": "ts"}.get(table)
    n_kept = n_valid = 0
    writer = None
    path = settings.curated_dir / f"{table}.parquet"
    try:
        for valid, quarantined in validate_in_chunks(
            table, rows.kept_slices(table, VALIDATE_CHUNK_ROWS, conflicts.write)
        ):
            contract.write(quarantined)
            n_kept += len(valid) + len(quarantined)
            for col, parent, key in parents:
                unknown = ~keys[(parent, key)].contains(key_hash(valid[col]))
                if unknown.any():
                    orphans.write(valid.loc[unknown].assign(_reason=f"{col}: not in curated {parent}"))
                    valid = valid.loc[~unknown]
            valid = valid.reset_index(drop=True)
            frame = pa.Table.from_pandas(valid, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, text_for_null(frame.schema))
            writer.write_table(frame.cast(writer.schema))
            n_valid += len(valid)
            for parent_key in own_keys:  # what later tables are checked against
                keys.setdefault(parent_key, HashSet()).add(key_hash(valid[parent_key[1]]))
            if first_col and valid[first_col].notna().any():
                firsts.append(valid[first_col].min())
            for batch, n in valid[BATCH_COLUMN].value_counts().items():
                entry = per_batch.setdefault(batch, {}).setdefault(table, {})
                entry["curated"] = entry.get("curated", 0) + int(n)
    finally:
        if writer is not None:
            writer.close()
        contract.close()
        orphans.close()
    counts = rows.counts
    skipped = sum(c.get("duplicates_skipped", 0) for c in counts.values())
    updated = sum(c.get("updated", 0) for c in counts.values())
    # the no-silent-drop invariant: every row read is kept, skipped as a duplicate, replaced, or quarantined
    if rows.n_read + rows.derived != n_kept + skipped + updated + conflicts.rows:
        raise ContractError(f"{table}: rows lost in deduplication")
    if n_kept != n_valid + contract.rows + orphans.rows:
        raise ContractError(f"{table}: rows lost in validation")
    for batch, c in counts.items():
        per_batch.setdefault(batch, {})[table] = c | per_batch.get(batch, {}).get(table, {})
    for batch, n in (contract.batches + orphans.batches).items():
        per_batch.setdefault(batch, {}).setdefault(table, {})["quarantined"] = int(n)
    reasons = contract.reasons + orphans.reasons
    return {
        "raw": rows.n_read,
        "derived": rows.derived,
        "valid": n_valid,
        "duplicates_skipped": skipped,
        "updated": updated,
        "quarantined_conflict": conflicts.rows,
        "quarantined_contract": contract.rows,
        "quarantined_reference": orphans.rows,
        "rejected_by_adapter": _count_quarantine(settings, table, ("adapter", "import_")),
        "reasons": {str(k): int(v) for k, v in reasons.most_common(5)},
    }


def _count_quarantine(settings: Settings, table: str, stages: tuple[str, ...]) -> int:
    n = 0
    for path in settings.quarantine_dir.glob(f"{table}__*.parquet"):
        if path.stem.split("__", 1)[1].startswith(stages):
            n += pq.ParquetFile(path).metadata.num_rows
    return n


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
