"""Materialisation into the online store: Feast's default configuration against ours, on
the same built world, measured in one run.

    loyalty-ml --data-dir D data simulate --members 100000 && loyalty-ml --data-dir D data validate
    loyalty-ml --data-dir D features build
    python bench/materialize_bench.py --data-dir D [--sample 2000]

Each configuration runs in its own process (its peak RSS is the process's) from an empty
online store (``feast apply`` into a fresh ``online_store.db``) and runs
``features.store.materialize`` as ``features materialize`` does. Feast's default reads every
row of the window, converts a whole view to protos at once and writes one upsert per value in
the order the rows come; ours reads each member's latest row (``features.store.MATERIALIZATION``)
and writes the view sorted by entity key, 50,000 members a transaction
(``features.online_sqlite``). The online values of a sample of members must be equal under both.

Last line: ``SUMMARY materialize_bench members=N default_s=A ours_s=B default_peak_gb=C
ours_peak_gb=D equal=True``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

warnings.filterwarnings("ignore")


def materialize_once(data_dir: Path, config_name: str, sample: int, out: Path) -> dict:
    """In this process: materialise with one configuration; write a sample's online values."""
    from feast.repo_config import MaterializationConfig

    import features.store as store
    from kernel.curated import dataset_end, load_curated
    from kernel.settings import Settings

    settings = Settings(data_dir=data_dir, dataset="simulated")
    if config_name == "default":
        store.MATERIALIZATION = MaterializationConfig()  # what repo_config hands Feast
        # and Feast's own conversion and SQLite writer, through its provider
        store.OrderedSqliteOnlineStore.writes_in_order = staticmethod(lambda config, view: False)
    settings.online_store_path.unlink(missing_ok=True)
    store.apply(settings)
    start = time.perf_counter()
    store.materialize(settings, dataset_end(settings))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    members = load_curated(settings, "members", ["member_id"])["member_id"]
    feast = store.get_store(settings)
    ids = members.sample(min(sample, len(members)), random_state=0).tolist()
    rows = [{"member_id": m} for m in ids]
    online = feast.get_online_features(features=store.serving_feature_refs(feast), entity_rows=rows).to_df()
    online.sort_values("member_id").sort_index(axis=1).reset_index(drop=True).to_pickle(out)
    return {"seconds": seconds, "peak_bytes": peak, "members": len(members)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--sample", type=int, default=2000, help="members whose online values are compared")
    ap.add_argument("--only", choices=["default", "ours"], help=argparse.SUPPRESS)  # the child's run
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        print(json.dumps(materialize_once(args.data_dir, args.only, args.sample, args.out)))
        return

    results, values = {}, {}
    for name in ("default", "ours"):
        out = args.data_dir / f"materialize-bench-{name}.pkl"
        cmd = [sys.executable, __file__, "--data-dir", str(args.data_dir), "--sample", str(args.sample)]
        child = subprocess.run([*cmd, "--only", name, "--out", str(out)], capture_output=True, text=True)
        if child.returncode:
            raise SystemExit(f"{name}: exit {child.returncode}\n{child.stderr[-2000:]}")
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
        values[name] = pd.read_pickle(out)
        out.unlink()
        r = results[name]
        print(f"{name:<8} {r['seconds']:8.1f} s  peak RSS {r['peak_bytes'] / 2**30:5.2f} GB", flush=True)
    equal = values["default"].equals(values["ours"])
    d, o = results["default"], results["ours"]
    print(
        f"SUMMARY materialize_bench members={o['members']} default_s={d['seconds']:.1f} ours_s={o['seconds']:.1f} "
        f"default_peak_gb={d['peak_bytes'] / 2**30:.2f} ours_peak_gb={o['peak_bytes'] / 2**30:.2f} equal={equal}"
    )


if __name__ == "__main__":
    main()
