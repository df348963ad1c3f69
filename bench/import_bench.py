"""Import throughput: 1M transaction rows from CSV through a mapping, against pandas ``read_csv``
of the same file in the same run.

    python bench/import_bench.py [--rows 1000000]

The export has text dates in day-first order, a decimal comma, a cancellation rule and a
derived amount: the work a real export asks for. ``import`` is read + coerce + rules +
derive (``training.data.importer.import_tables``); the ratio is read_csv seconds over import
seconds (1.0: as fast as reading the file). Last line:
``SUMMARY import_bench rows=N import_over_read_csv=R rows_per_s=S``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.importer import import_tables
from training.data.mapping import load_mapping

MAPPING = """
timezone: Europe/Berlin
decimal: ","
tables:
  transactions:
    source: sales.csv
    columns: {order_id: Beleg, member_id: Kunde, item_id: Artikel, quantity: Menge, unit_price: Preis, ts: Datum}
    date_format: "%d.%m.%Y %H:%M"
    constants: {channel: store, store_id: null}
    derive: {amount: quantity * unit_price}
    rules:
      - {reject: storno, where: {field: order_id, starts_with: "S"}}
"""


def export(folder: Path, rows: int) -> Path:
    rng = np.random.default_rng(7)
    orders = rng.integers(0, rows // 3, rows)
    ts = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.sort(rng.integers(0, 365 * 86400, rows)), unit="s")
    df = pd.DataFrame(
        {
            "Beleg": np.where(rng.random(rows) < 0.02, "S", "") + orders.astype(str),
            "Kunde": rng.integers(0, rows // 10, rows).astype(str),
            "Artikel": "A" + rng.integers(0, 5000, rows).astype(str),
            "Menge": rng.integers(1, 5, rows),
            "Preis": pd.Series(rng.uniform(0.5, 80, rows)).map("{:.2f}".format).str.replace(".", ",", regex=False),
            "Datum": ts.strftime("%d.%m.%Y %H:%M"),
        }
    )
    df.to_csv(folder / "sales.csv", index=False)
    (folder / "mapping.yaml").write_text(MAPPING)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    folder = export(Path(tempfile.mkdtemp(prefix="import_bench_")), args.rows)
    t = time.perf_counter()
    pd.read_csv(folder / "sales.csv")
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    out = import_tables(folder, load_mapping(folder / "mapping.yaml"))
    import_s = time.perf_counter() - t
    kept, rejected = len(out.tables["transactions"]), len(out.rejected["transactions"])
    assert kept + rejected == args.rows  # every row kept or rejected with its reason
    print(f"read_csv {read_s:.2f} s; import {import_s:.2f} s ({kept} kept, {rejected} rejected)")
    print(
        f"SUMMARY import_bench rows={args.rows} import_over_read_csv={read_s / import_s:.2f} "
        f"rows_per_s={args.rows / import_s:.0f}"
    )


if __name__ == "__main__":
    main()
