"""Issue 14's comparison repeated on public data kept outside the project: CDNOW.

CDNOW is the purchase history of 23,570 customers of an online CD store from January 1997 to
June 1998, one line per customer and purchase day with the CDs bought and the dollars spent.
BG/NBD was published on it, so it is the hardest fair test for a model that claims to beat
BG/NBD. It ships inside the ``lifetimes`` wheel and comes by package name from the package
index; nothing is copied into this repository. The bench turns it into the CSV export a
retailer would hand over and runs the documented commands on it:

    python bench/external_data.py --work /tmp/cdnow [--source CDNOW_master.txt]

    data import (mapping bench/external/cdnow.yaml) -> data validate -> features build, apply
    -> train churn, train clv -> bench/quality_tables.py (last line: SUMMARY quality cdnow: ...)

There are no products (one item), so CF is skipped, as the import documents for a catalogue
smaller than k. The churn and CLV jobs run with their defaults, with the same code and settings
as on the shared sets.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MAPPING = ROOT / "bench" / "external" / "cdnow.yaml"
WHEEL = "lifetimes==0.11.3"  # the last release; its datasets/ holds the full CDNOW master file
MASTER = "lifetimes/datasets/CDNOW_master.txt"
DATASET = "cdnow"


def fetch_master(work: Path) -> Path:
    """The published CDNOW master file, from the ``lifetimes`` wheel (pip download, no install)."""
    wheels = work / "wheel"
    if not list(wheels.glob("*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-q", "-d", str(wheels)], check=True
        )
    wheel = next(wheels.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract(MASTER, work)
    return work / MASTER


def cdnow_export(master: Path, out_dir: Path) -> Path:
    """The master file (header, then whitespace-separated id, yyyymmdd, CDs, dollars) as a CSV
    export with an order id per customer, day and line: the file the mapping reads."""
    t = pd.read_csv(
        master,
        sep=r"\s+",
        skiprows=1,
        header=None,
        names=["customer", "date", "cds", "dollars"],
        dtype={"customer": str, "date": str},
    )
    # one line per customer and day; a second line that day is a second order, never a duplicate
    t["order"] = t["customer"] + "-" + t["date"] + "-" + t.groupby(["customer", "date"]).cumcount().astype(str)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "transactions.csv"
    t.to_csv(out, index=False)
    return out


def _loyalty(*args: str, env: dict) -> None:
    from scale_bench import cli  # this folder: run as ``python bench/external_data.py``

    print("$ loyalty-ml " + " ".join(args), flush=True)
    subprocess.run([*cli(), *args], env=env, cwd=ROOT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a folder outside the project (made if missing)")
    ap.add_argument("--source", type=Path, default=None, help="CDNOW_master.txt already at hand (no download)")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    master = args.source or fetch_master(work)
    export = cdnow_export(master, work / "export").parent
    env = os.environ | {"LOYALTY_DATA_DIR": str(work / "data"), "LOYALTY_DATASET": DATASET}
    _loyalty("data", "import", "--dataset", DATASET, "--source", str(export), "--mapping", str(MAPPING), env=env)
    steps = (["data", "validate"], ["features", "build"], ["features", "apply"], ["train", "churn"], ["train", "clv"])
    for step in steps:
        _loyalty(*step, env=env)
    subprocess.run([sys.executable, str(ROOT / "bench" / "quality_tables.py")], env=env, cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
