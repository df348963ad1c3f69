"""bench/external_data.py: the published CDNOW file becomes a retailer's CSV export that the
generic import reads through bench/external/cdnow.yaml, with no code for the data set."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from training.data.importer import import_tables
from training.data.mapping import load_mapping

ROOT = Path(__file__).resolve().parents[1]
# the master file's own layout: a header, then id, yyyymmdd, CDs, dollars, space-aligned
MASTER = """customer_id  date number_of_cds  dollar_value
 00001 19970101  1   11.77
 00002 19970112  1   12.00
 00002 19970112  5   77.00
 00003 19970102  2   20.76
 00003 19970330  2   20.76
 00004 19970101  1    0.00
"""


def _bench():
    spec = importlib.util.spec_from_file_location("external_data", ROOT / "bench" / "external_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.unit
def test_the_cdnow_master_file_imports_through_its_mapping_alone(tmp_path):
    master = tmp_path / "CDNOW_master.txt"
    master.write_text(MASTER)
    export = _bench().cdnow_export(master, tmp_path / "export")
    rows = pd.read_csv(export, dtype=str)
    assert len(rows) == 6 and rows["customer"].tolist()[:2] == ["00001", "00002"]  # ids keep their zeros
    # two purchases by one customer on one day are two orders, not a duplicate line
    assert rows["order"].nunique() == 6

    out = import_tables(export.parent, load_mapping(ROOT / "bench" / "external" / "cdnow.yaml"))
    txn = out.tables["transactions"].sort_values(["member_id", "ts", "order_id"]).reset_index(drop=True)
    assert len(txn) == 5 and set(txn["item_id"]) == {"cd"}
    assert txn["amount"].tolist() == pytest.approx([11.77, 12.0, 77.0, 20.76, 20.76])
    assert txn.loc[2, "unit_price"] == pytest.approx(77.0 / 5)
    assert txn.loc[0, "ts"] == pd.Timestamp("1997-01-01 05:00")  # midnight in New York, as UTC
    rejected = out.rejected["transactions"]
    assert len(rejected) == 1 and rejected["_reason"].iloc[0] == "zero-dollar purchase"
