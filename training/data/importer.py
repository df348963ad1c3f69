"""A retailer's own tables -> the contracts' raw tables, through a :class:`Mapping`.

Reads each table from a folder (CSV, Parquet, JSON lines) or a database (SQLAlchemy URL),
renames, coerces each field to its contract type, derives fields, applies the rejection
rules, and builds members and items from the transactions where the export has none.
A row that cannot be read (a date that does not parse, a text where a number belongs) or
that a rule rejects comes back in ``rejected`` with the reason: nothing is dropped silently.
A problem with the source or the mapping as a whole (a missing column, dates in another
format, a table left empty) is a :class:`MappingError` naming the table, field and setting.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kernel.contracts import CONTRACTS, NATURAL_KEYS
from training.data.mapping import EXPRESSION, HELPER_FIELDS, CategoryRule, Mapping, MappingError, TableMapping
from training.data.points import derive_points_ledger
from training.data.tiers import tier_from_spend, tier_names

SUFFIXES = (".csv", ".parquet", ".jsonl", ".json")
CONSENTS = ("consent_personalisation", "consent_push", "consent_sms", "consent_email")
TRUE = {"true", "t", "yes", "y", "1", "1.0"}
FALSE = {"false", "f", "no", "n", "0", "0.0"}
# most of a column failing to parse is the mapping's fault (a date format, a decimal comma), not the rows'
WHOLE_COLUMN_SHARE = 0.5


@dataclass
class ImportOutput:
    tables: dict[str, pd.DataFrame]
    rejected: dict[str, pd.DataFrame] = field(default_factory=dict)  # source columns + _source_row + _reason
    end: pd.Timestamp | None = None
    notes: list[str] = field(default_factory=list)

    def rejected_counts(self) -> dict[str, dict[str, int]]:
        return {t: df["_reason"].value_counts().to_dict() for t, df in self.rejected.items() if len(df)}


@functools.cache
def field_types(table: str) -> dict[str, tuple[str, bool]]:
    """field -> (kind, nullable) for the contract's fields and the table's helper fields."""
    out = {}
    for name, col in CONTRACTS[table].to_schema().columns.items():
        dtype = str(col.dtype)
        kind = (
            "time"
            if dtype.startswith("datetime")
            else "int"
            if dtype in ("int64", "Int64")
            else "float"
            if dtype.startswith("float")
            else "bool"
            if dtype == "bool"
            else "str"
        )
        out[name] = (kind, bool(col.nullable))
    for name, kind in HELPER_FIELDS.get(table, {}).items():
        out[name] = (kind, True)
    return out


# --------------------------------------------------------------------------- reading
def source_tables(source: str | Path) -> list[str]:
    """Contract tables that a source folder holds under their own names (``members.csv`` ...)."""
    folder = Path(source)
    return [t for t in CONTRACTS if any((folder / f"{t}{s}").exists() for s in SUFFIXES)]


def is_database(source: str | Path) -> bool:
    return "://" in str(source)


def read_table(source: str | Path, table: str, spec: TableMapping) -> pd.DataFrame | None:
    """The table's rows as the source holds them (None: not in the source)."""
    if is_database(source):
        return _read_sql(str(source), table, spec)
    folder = Path(source)
    if not folder.is_dir():
        raise MappingError(f"source {folder} is not a folder (or a database URL such as postgresql+psycopg://...)")
    if spec.query:
        raise MappingError(f"tables.{table}.query: a query needs a database source, not the folder {folder}")
    if spec.source:
        path = folder / spec.source
        if not path.exists():
            raise MappingError(f"tables.{table}.source: {path} not found")
    else:
        found = [folder / f"{table}{s}" for s in SUFFIXES if (folder / f"{table}{s}").exists()]
        if not found:
            return None
        path = found[0]
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=path.suffix == ".jsonl", dtype=False)
        # text stays text: each field is coerced below, with the mapping's date format and separators
        return _read_csv_as_text(path)
    except (ValueError, OSError) as err:
        raise MappingError(f"{table}: cannot read {path}: {str(err).splitlines()[0]}") from err


def _read_csv_as_text(path: Path) -> pd.DataFrame:
    """Every column as text (pyarrow's reader, without its type guessing): fields are coerced
    below with the mapping's formats, and an id such as 007 keeps its zeros."""
    import csv

    import pyarrow as pa
    from pyarrow import csv as pacsv

    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=True)
    return pacsv.read_csv(path, convert_options=convert).to_pandas()


def _read_sql(url: str, table: str, spec: TableMapping) -> pd.DataFrame | None:
    import sqlalchemy as sa

    if not (spec.query or spec.source):
        return None
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ImportError) as err:
        raise MappingError(f"--source: not a usable database URL ({err})") from err
    stmt = sa.text(spec.query) if spec.query else sa.select(sa.text("*")).select_from(sa.table(spec.source))
    try:
        with engine.connect() as conn:
            return pd.read_sql(stmt, conn)
    except sa.exc.SQLAlchemyError as err:
        setting = "query" if spec.query else "source"
        detail = str(getattr(err, "orig", err)).splitlines()[0]
        raise MappingError(f"tables.{table}.{setting}: the database refused it: {detail}") from err
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- coercion
def coerce(values: pd.Series, kind: str, mapping: Mapping, date_format: str | None) -> tuple[pd.Series, pd.Series]:
    """``values`` as ``kind``; and a mask of the rows given but not readable as one."""
    if values.dtype.kind not in "fiubM":  # text: Arrow's string kernels, not Python's, per value
        values = values.astype("string[pyarrow]").str.strip()
        given = values.notna() & ~values.isin(["", "nan", "NaN", "None", "NaT"])
    else:
        given = values.notna()
    if kind == "str":
        out = _ids(values)
        return out.where(given, None), pd.Series(False, index=values.index)
    if kind in ("int", "float"):
        out = _number(values, mapping)
        if kind == "int":
            out = out.where(out == np.round(out)).astype("Int64")  # one type whatever the batch holds
    elif kind == "bool":
        text = values.astype("string[pyarrow]").str.lower()
        out = pd.Series(np.where(text.isin(TRUE), True, np.where(text.isin(FALSE), False, None)), index=values.index)
        out = out.where(text.isin(TRUE | FALSE), None)
    else:
        out = _time(values, mapping.timezone, date_format)
    return out, given & out.isna()


def _ids(values: pd.Series) -> pd.Series:
    """Identifiers as text; numbers read as floats (17850.0) become 17850."""
    if values.dtype.kind == "f":
        whole = values.dropna()
        if (whole == np.round(whole)).all():
            return values.astype("Int64").astype(str).where(values.notna(), None)
    return values.astype(object) if isinstance(values.dtype, pd.StringDtype) else values.astype(str)


def _number(values: pd.Series, mapping: Mapping) -> pd.Series:
    if values.dtype.kind in "fiub":
        return values.astype(float)
    text = values.astype("string[pyarrow]")
    if mapping.thousands:
        text = text.str.replace(mapping.thousands, "", regex=False)
    if mapping.decimal != ".":
        text = text.str.replace(mapping.decimal, ".", regex=False)
    return pd.to_numeric(text, errors="coerce")


def _time(values: pd.Series, tz: str, date_format: str | None) -> pd.Series:
    if values.dtype.kind == "M":
        out = values
    else:
        out = _parse_times(values, date_format)
    if getattr(out.dt, "tz", None) is None:
        out = out.dt.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward")
    return out.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")


def _parse_times(values: pd.Series, date_format: str | None) -> pd.Series:
    """Text -> times: Arrow's strptime for an explicit format (C++, ~10x pandas' per value),
    pandas for ISO 8601 (offsets included) and for formats Arrow does not know."""
    if date_format and "%z" not in date_format:
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            text = pa.array(values.astype(object), type=pa.string())
            parsed = pc.strptime(text, format=date_format, unit="s", error_is_null=True)
            return pd.Series(parsed.to_pandas(), index=values.index).astype("datetime64[ns]")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return pd.to_datetime(values.astype(object), format=date_format or "ISO8601", errors="coerce")


# --------------------------------------------------------------------------- one table
def map_table(raw: pd.DataFrame, table: str, spec: TableMapping, mapping: Mapping) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Source rows -> (the table's fields, the rejected source rows with their reasons)."""
    types = field_types(table)
    raw = raw.reset_index(drop=True)
    columns = spec.columns or {f: f for f in types if f in raw.columns}
    missing = {f: c for f, c in columns.items() if c not in raw.columns}
    if missing:
        f, c = next(iter(missing.items()))
        raise MappingError(
            f"{table}: column {c!r} (for field {f}) is not in the source; its columns are {list(raw.columns)[:20]};"
            f" fix tables.{table}.columns.{f}"
        )
    out = pd.DataFrame(index=raw.index)
    reasons = pd.Series(None, index=raw.index, dtype=object)
    for f, c in columns.items():
        kind, _ = types[f]
        fmt = spec.date_format
        values, bad = coerce(raw[c], kind, mapping, fmt)
        _whole_column_check(table, f, c, raw[c], bad, kind, fmt)
        out[f] = values
        reasons = _first_reason(reasons, bad, f"{f}: not a {kind} (column {c})")
    for f, value in spec.constants.items():
        kind = types[f][0]
        out[f] = coerce(pd.Series([value] * len(raw), index=raw.index, dtype=object), kind, mapping, None)[0]
    for f, how in spec.derive.items():
        if isinstance(how, CategoryRule):
            continue  # category rules apply to tables built from transactions (items)
        out[f] = _expression(out, how, table, f)
    for rule in spec.rules:
        hit = _condition(out, rule.where, table) & reasons.isna()
        reasons = reasons.where(~hit, rule.reject)
    rejected = raw.loc[reasons.notna()].astype("string")
    rejected.insert(0, "_source_row", rejected.index.astype("int64"))
    rejected["_reason"] = reasons[reasons.notna()]
    return out.loc[reasons.isna()].reset_index(drop=True), rejected.reset_index(drop=True)


def _whole_column_check(table: str, f: str, column: str, raw: pd.Series, bad: pd.Series, kind: str, fmt) -> None:
    n_given = int(raw.notna().sum())
    if n_given == 0 or bad.sum() <= WHOLE_COLUMN_SHARE * n_given:
        return
    example = raw[bad].iloc[0]
    hint = {
        "time": f"set tables.{table}.date_format (now {fmt or 'ISO 8601'!r}) and `timezone`",
        "float": "set `decimal` / `thousands`",
        "int": "set `decimal` / `thousands`, or map a whole-number column",
        "bool": "use true/false, yes/no or 1/0",
    }.get(kind, "")
    raise MappingError(
        f"{table}.{f}: {int(bad.sum())} of {n_given} values in column {column!r} are not a {kind} "
        f"(e.g. {example!r}); {hint}"
    )


def _first_reason(reasons: pd.Series, mask: pd.Series, reason: str) -> pd.Series:
    return reasons.where(~(mask & reasons.isna()), reason)


def _expression(df: pd.DataFrame, how: str, table: str, target: str) -> pd.Series:
    left, op, right = EXPRESSION.match(how).groups()

    def operand(name: str):
        if name is None:
            return None
        if name[0].isdigit():
            return float(name)
        if name not in df.columns:
            raise MappingError(f"tables.{table}.derive.{target}: {name!r} is not a mapped field ({list(df.columns)})")
        return pd.to_numeric(df[name], errors="coerce") if op else df[name]

    a, b = operand(left), operand(right)
    if op is None:
        return a
    out = {"*": lambda: a * b, "/": lambda: a / b, "+": lambda: a + b, "-": lambda: a - b}[op]()
    return out.round(2) if target in ("amount", "revenue", "price", "cost") else out


def _condition(df: pd.DataFrame, cond, table: str) -> pd.Series:
    if cond.field not in df.columns:
        raise MappingError(f"tables.{table}.rules: field {cond.field!r} is not mapped ({list(df.columns)})")
    s = df[cond.field]
    if cond.missing is not None:
        return s.isna() if cond.missing else s.notna()
    if cond.starts_with is not None:
        return s.astype(str).str.startswith(cond.starts_with) & s.notna()
    if cond.matches is not None:
        return s.astype(str).str.contains(cond.matches, regex=True) & s.notna()
    if cond.equals is not None:
        return s.astype(str) == str(cond.equals)
    if cond.in_ is not None:
        return s.astype(str).isin([str(v) for v in cond.in_])
    num = pd.to_numeric(s, errors="coerce")
    for op, bound in (("lt", cond.lt), ("le", cond.le), ("gt", cond.gt), ("ge", cond.ge)):
        if bound is not None:
            return getattr(num, op)(bound).fillna(False)
    raise AssertionError("unreachable: a condition has one test")


# --------------------------------------------------------------------------- the whole import
def import_tables(source: str | Path, mapping: Mapping) -> ImportOutput:
    """Read and map every table the export holds (tables built from transactions come later,
    from every batch at once: :func:`complete_tables`)."""
    notes: list[str] = []
    tables: dict[str, pd.DataFrame] = {}
    rejected: dict[str, pd.DataFrame] = {}
    for table in CONTRACTS:
        spec = mapping.tables.get(table)
        if spec is None or (spec.from_transactions and not spec.has_source):
            if spec is None and table not in ("members", "items", "points_ledger"):
                notes.append(f"{table}: not in the mapping, empty")
            continue
        raw = read_table(source, table, spec)
        if raw is None:
            if table == "transactions":
                raise MappingError(f"transactions: not found in {source} (name the file in tables.transactions.source)")
            notes.append(f"{table}: not in the source, empty")
            continue
        tables[table], rejected[table] = map_table(raw, table, spec, mapping)
        # a partial table (e.g. members' consent from a CRM) is completed from the transactions
        _require_fields(table, tables[table], only_key=spec.from_transactions)
        if len(raw) and tables[table].empty:
            top = rejected[table]["_reason"].value_counts()
            raise MappingError(
                f"{table}: no rows left after the mapping's rules ({len(raw)} read; "
                + ", ".join(f"{n} {r!r}" for r, n in top.head(3).items())
                + f"); check tables.{table}.rules and columns"
            )
    if tables["transactions"].empty:
        raise MappingError("transactions: the source table is empty")
    txn = tables["transactions"]
    if "line_no" not in txn.columns:  # the order line's number: part of its natural key
        txn["line_no"] = txn.groupby(["order_id", "item_id"], sort=False).cumcount().astype(str)
    notes += derivation_notes(mapping, tables)
    return ImportOutput(tables, rejected, txn["ts"].max().normalize() + pd.Timedelta(days=1), notes)


def complete_tables(
    tables: dict[str, pd.DataFrame], mapping: Mapping, keep: str | None = None
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Build what the export lacks from the transactions (members, items, the points ledger),
    with a note each, and reduce every table to its contract's columns (and ``keep``, e.g. the
    batch column, missing on built rows)."""
    notes = derivation_notes(mapping, tables)
    tables = dict(tables)
    txn = tables["transactions"]
    end = txn["ts"].max().normalize() + pd.Timedelta(days=1)
    members_spec = mapping.tables.get("members")
    if members_spec is None or members_spec.from_transactions:
        built = members_from_transactions(txn, end, consent_assumed=mapping.consent == "assumed")
        tables["members"] = fill_from(tables.get("members"), built, "member_id")
    if mapping.consent == "assumed":
        for c in CONSENTS:
            tables["members"][c] = True
    items_spec = mapping.tables.get("items")
    if items_spec is None or items_spec.from_transactions:
        built = items_from_transactions(txn, items_spec or TableMapping(), mapping.margin_rate)
        tables["items"] = fill_from(tables.get("items"), built, "item_id")
    if (tables.get("points_ledger") is None or tables["points_ledger"].empty) and mapping.points == "derive":
        ledger = derive_points_ledger(_contract_columns("transactions", txn), None, end)
        tables["points_ledger"] = ledger.drop(columns="fraud")
    for table in CONTRACTS:
        tables[table] = _contract_columns(table, tables[table], keep) if table in tables else empty_table(table)
    return tables, notes


def fill_from(given: pd.DataFrame | None, built: pd.DataFrame, key: str) -> pd.DataFrame:
    """The export's partial table completed by the one built from the transactions: its values
    win, its gaps are filled, keys only the transactions know are added. Keys only the export
    knows keep their gaps, so validation quarantines them with the field that is missing."""
    if given is None or given.empty:
        return built
    merged = given.merge(built, on=key, how="outer", suffixes=("", "__built"), sort=False)
    for col in built.columns.drop(key):
        if col in given.columns:
            merged[col] = merged[col].where(merged[col].notna(), merged.pop(f"{col}__built"))
    return merged


def derivation_notes(mapping: Mapping, tables: dict[str, pd.DataFrame]) -> list[str]:
    """What :func:`complete_tables` builds or assumes for these tables, one note each."""
    notes = []
    members, items = mapping.tables.get("members"), mapping.tables.get("items")
    partial = {
        t: s is not None and s.from_transactions and s.has_source for t, s in (("members", members), ("items", items))
    }
    if partial["members"]:
        notes.append(
            "members: fields the export lacks filled from the transactions (join = first purchase, tier from "
            "12-month spend); buyers without a member row get no consent"
        )
    elif members is None or members.from_transactions:
        notes.append("members: built from the transactions (join = first purchase, tier from 12-month spend)")
        if mapping.consent != "assumed":
            notes.append("members: no consent records, so no consent (nothing personalised or sent)")
    if mapping.consent == "assumed":
        notes.append("consent: no records, assumed for offline evaluation only (never serve this to members)")
    if partial["items"]:
        notes.append(
            f"items: fields the export lacks filled from the transactions (median price, margin_rate "
            f"{mapping.margin_rate})"
        )
    elif items is None or items.from_transactions:
        notes.append(f"items: built from the transactions (median price, margin_rate {mapping.margin_rate})")
    if (tables.get("points_ledger") is None or tables["points_ledger"].empty) and mapping.points == "derive":
        notes.append("points_ledger: derived with the programme's rule (1 point per currency unit, no burns)")
    return notes


def _require_fields(table: str, df: pd.DataFrame, only_key: bool = False) -> None:
    types = field_types(table)
    required = [f for f, (_, nullable) in types.items() if not nullable and f not in HELPER_FIELDS.get(table, {})]
    if only_key:
        required = NATURAL_KEYS[table]
    missing = [f for f in required if f not in df.columns]
    if missing:
        raise MappingError(
            f"{table}: field(s) {missing} not mapped; add them under tables.{table}.columns, constants or derive"
        )


def _contract_columns(table: str, df: pd.DataFrame, keep: str | None = None) -> pd.DataFrame:
    cols = list(CONTRACTS[table].to_schema().columns) + ([keep] if keep and keep in df.columns else [])
    out = df.copy()
    for c in cols:
        if c not in out.columns:
            out[c] = None
    return out[cols]


def empty_table(table: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in CONTRACTS[table].to_schema().columns})


def members_from_transactions(txn: pd.DataFrame, end: pd.Timestamp, consent_assumed: bool) -> pd.DataFrame:
    """One member per buyer: join = first purchase, tier from the last 12 months' spend,
    region the most frequent one on their orders (``unknown`` without)."""
    first = txn.groupby("member_id")["ts"].min()
    last = txn.groupby("member_id")["ts"].max()
    spend = txn.loc[txn["ts"] >= end - pd.Timedelta(days=365)].groupby("member_id")["amount"].sum()
    ids = first.index
    tiers = tier_names(tier_from_spend(spend.reindex(ids).fillna(0).to_numpy(), (end - last).dt.days.to_numpy()))
    if "region" in txn.columns and txn["region"].notna().any():
        counts = txn.groupby(["member_id", "region"]).size().reset_index(name="n")
        region = counts.sort_values(["member_id", "n"], ascending=[True, False]).drop_duplicates("member_id")
        region = region.set_index("member_id")["region"].reindex(ids).fillna("unknown").to_numpy()
    else:
        region = "unknown"
    return pd.DataFrame(
        {
            "member_id": ids,
            "join_date": first.to_numpy(),
            "birthday_month": pd.array([pd.NA] * len(ids), dtype="Int64"),
            "region": region,
            "city_tier": pd.array([pd.NA] * len(ids), dtype="Int64"),
            "tier": tiers,
            **{c: consent_assumed for c in CONSENTS},
            "consent_updated_at": first.to_numpy(),
        }
    )


def items_from_transactions(txn: pd.DataFrame, spec: TableMapping, margin_rate: float) -> pd.DataFrame:
    """One item per item id sold: median unit price (amount / quantity without one), categories
    from the mapping's rules on the most frequent description (``UNKNOWN`` without)."""
    unit = txn["unit_price"] if "unit_price" in txn.columns else txn["amount"] / txn["quantity"]
    price = unit.groupby(txn["item_id"]).median()
    ids = price.index
    if "description" in txn.columns:
        desc = txn.groupby("item_id")["description"].agg(lambda s: s.mode().iat[0] if s.notna().any() else "")
        desc = desc.reindex(ids).fillna("")
    else:
        desc = pd.Series("", index=ids)
    out = pd.DataFrame({"item_id": ids, "price": price.to_numpy(), "margin_rate": margin_rate})
    for level in ("category_l1", "category_l2"):
        rule = spec.derive.get(level)
        if isinstance(rule, CategoryRule):
            if rule.of != "description":
                raise MappingError(f"tables.items.derive.{level}.of: items built from transactions know `description`")
            out[level] = category(desc, rule).to_numpy()
        else:
            out[level] = "UNKNOWN"
    return out


def category(text: pd.Series, rule: CategoryRule) -> pd.Series:
    """A category per text: its last words (upper-cased, letters only), or the first matching pattern."""
    if rule.last_words:
        words = text.astype(str).str.upper().str.replace(r"[^A-Z ]", " ", regex=True).str.split()
        return words.map(lambda w: " ".join(w[-rule.last_words :]) if w else rule.default)
    out = pd.Series(rule.default, index=text.index, dtype=object)
    done = pd.Series(False, index=text.index)
    for pattern, name in (rule.patterns or {}).items():
        hit = text.astype(str).str.contains(pattern, case=False, regex=True) & ~done
        out[hit] = name
        done |= hit
    return out
