"""Reads of a dataset's curated tables and metadata, shared by features, training and serving."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa

from kernel.contracts import CONTRACTS
from kernel.settings import Settings


def write_meta(settings: Settings, meta: dict) -> None:
    settings.dataset_dir.mkdir(parents=True, exist_ok=True)
    (settings.dataset_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str))


def read_meta(settings: Settings) -> dict:
    path = settings.dataset_dir / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `loyalty-ml data load` for dataset {settings.dataset!r} first")
    return json.loads(path.read_text())


def dataset_end(settings: Settings) -> pd.Timestamp:
    """The last moment of the dataset: features are materialised as of it."""
    return pd.Timestamp(read_meta(settings)["end"])


def dataset_cutoff(meta: dict, settings: Settings) -> pd.Timestamp:
    """Training cutoff: models see data before it and are evaluated on the label window after it.

    The simulator records its cutoff (where its churn ground truth is exact); public data
    sets use their last ``label_window_days`` days as the holdout window.
    """
    if meta.get("cutoff") is not None and int(meta.get("label_window_days", -1)) == settings.label_window_days:
        return pd.Timestamp(meta["cutoff"])
    return pd.Timestamp(meta["end"]) - pd.Timedelta(days=settings.label_window_days)


def load_curated(settings: Settings, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A curated table (``columns``: only those, read column by column from parquet)."""
    if table not in CONTRACTS:
        raise ValueError(f"unknown table {table!r}")
    path = settings.curated_dir / f"{table}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `loyalty-ml data validate` first")
    return pd.read_parquet(path, columns=columns)


def order_totals(transactions: pd.DataFrame) -> pd.DataFrame:
    """One row per (member, order): the order's first line time and its total amount."""
    return transactions.groupby(["member_id", "order_id"], as_index=False).agg(
        ts=("ts", "min"), amount=("amount", "sum")
    )


def exposures_with_responses(settings: Settings) -> pd.DataFrame:
    """Exposures joined with their responses (no response row = no conversion)."""
    exp = load_curated(settings, "exposures")
    resp = load_curated(settings, "responses")
    resp = resp.drop_duplicates("exposure_id")[["exposure_id", "redeemed", "converted", "revenue"]]
    out = exp.merge(resp, on="exposure_id", how="left")
    for col in ("redeemed", "converted"):
        out[col] = out[col].astype("boolean").fillna(False).astype(bool)
    out["revenue"] = out["revenue"].fillna(0.0)
    return out


def text_for_null(schema: pa.Schema) -> pa.Schema:
    """A schema for a table written in parts: a column the first part holds only nulls in is
    typed as text, so later parts with values still fit (every other type is kept)."""
    return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema])
