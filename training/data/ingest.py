"""Raw tables -> contracts -> curated tables, with every rejected row quarantined and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from kernel.contracts import ContractError, validate
from kernel.curated import read_meta, write_meta
from kernel.settings import Settings
from training.data.adapters import ADAPTERS, AdapterOutput
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
# validate parents before children
ORDER = ["members", "items", "offers", "transactions", "exposures", "responses", "engagement", "points_ledger"]


def simulate_dataset(settings: Settings, n_members: int, seed: int | None = None, progress: bool = True) -> dict:
    cfg = SimConfig(n_members=n_members, seed=settings.seed if seed is None else seed)
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


def load_public_dataset(settings: Settings) -> AdapterOutput:
    """Run the adapter named by ``settings.dataset`` and write its raw tables and rejects."""
    if settings.dataset not in ADAPTERS:
        raise ValueError(f"dataset {settings.dataset!r} has no adapter; expected one of {sorted(ADAPTERS)}")
    out = ADAPTERS[settings.dataset](settings.shared_data_dir)
    _clear(settings.raw_dir)
    _clear(settings.quarantine_dir)
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


def validate_dataset(settings: Settings) -> dict:
    """Validate every raw table; write curated tables, quarantine files and a report."""
    _clear(settings.curated_dir)
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    for stage in ("contract", "reference"):  # adapter rejects stay: they come from the load step
        for old in settings.quarantine_dir.glob(f"*__{stage}.parquet"):
            old.unlink()
    report: dict[str, dict] = {}
    curated: dict[str, pd.DataFrame] = {}
    for table in ORDER:
        path = settings.raw_dir / f"{table}.parquet"
        if not path.exists():
            raise ContractError(f"{table}: raw file {path} missing")
        raw = pd.read_parquet(path)
        result = validate(table, raw)
        valid = result.valid
        _write_quarantine(settings, table, "contract", result.quarantined)
        orphans = []
        for (child, col), (parent, key) in REFERENCES.items():
            if child != table or parent not in curated:
                continue
            unknown = ~valid[col].isin(curated[parent][key])
            if unknown.any():
                orphans.append(valid.loc[unknown].assign(_reason=f"{col}: not in curated {parent}"))
                valid = valid.loc[~unknown]
        n_orphans = sum(len(o) for o in orphans)
        if orphans:
            _write_quarantine(settings, table, "reference", pd.concat(orphans))
        valid = valid.reset_index(drop=True)
        valid.to_parquet(settings.curated_dir / f"{table}.parquet", index=False)
        curated[table] = valid
        adapter_q = settings.quarantine_dir / f"{table}__adapter.parquet"
        n_adapter = len(pd.read_parquet(adapter_q, columns=["_reason"])) if adapter_q.exists() else 0
        report[table] = {
            "raw": len(raw),
            "valid": len(valid),
            "quarantined_contract": len(result.quarantined),
            "quarantined_reference": n_orphans,
            "rejected_by_adapter": n_adapter,
            "reasons": _top_reasons(result.quarantined, orphans),
        }
        if len(raw) != len(valid) + len(result.quarantined) + n_orphans:  # the no-silent-drop invariant
            raise ContractError(f"{table}: rows lost in validation")
    (settings.dataset_dir / "validation_report.json").write_text(json.dumps(report, indent=2))
    meta_path = settings.dataset_dir / "meta.json"
    if meta_path.exists():  # the programme's first data: the service refuses event times before it
        firsts = [curated["members"]["join_date"].min(), curated["transactions"]["ts"].min()]
        firsts = [t for t in firsts if pd.notna(t)]
        if firsts:
            write_meta(settings, read_meta(settings) | {"start": min(firsts)})
    return report


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
