"""Batch scoring against bare LightGBM on the same rows, measured in one run.

    loyalty-ml demo                      # once: data, features, models
    python bench/batch_bench.py [--members 1000000] [--drivers-members 100000]

1. Churn list: the world's latest feature snapshot is tiled to ``--members`` members (new ids,
   same rows) in a scratch copy of the dataset, and ``churn_scores`` (what ``score-churn``
   runs: bulk snapshot read, encode, predict, calibration, bands, actions) scores all of them;
   its members/s over a bare ``Booster.predict`` of the same encoded rows is ``churn_over_bare``.
   The champion is loaded once beforehand: loading it is a fixed cost, not throughput.
2. With drivers (``--drivers``, one SHAP pass) on ``--drivers-members`` members against a
   bare predict + ``pred_contrib`` of the same rows: ``churn_drivers_over_bare_shap``.
3. ``score-batch`` (``DecisionRuntime.score_batch``: online features in large batches, every
   eligible pair scored, the service's rules) for every member of the world, against a bare
   predict of the uplift model's boosters on the same member x offer rows: ``nbo_batch_over_bare``.
4. ``m1_churn_list_s``: the churn list's wall time for ``--members`` members.

Last line: ``SUMMARY batch_bench churn_over_bare=E churn_drivers_over_bare_shap=F nbo_batch_over_bare=G ...``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

warnings.filterwarnings("ignore")


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def tiled_world(settings, members: int, scratch: Path):
    """A copy of the dataset whose members and feature snapshots are the world's, tiled to
    ``members`` members under new ids (registry and meta copied; models stay where they are).
    Snapshot tables are written snapshot by snapshot, in time order as featurize writes them."""
    from features.sources import SNAPSHOT_TABLES
    from features.store import OFFLINE_ROW_GROUP

    copy = settings.model_copy(update={"data_dir": scratch})
    copy.dataset_dir.mkdir(parents=True)
    for name in ("meta.json", "registry.db"):
        shutil.copy(settings.dataset_dir / name, copy.dataset_dir / name)
    base = pq.read_table(settings.curated_dir / "members.parquet", columns=["member_id", "join_date"])
    tiles, rest = divmod(members, base.num_rows)
    last = base.column("member_id").slice(0, rest)  # the members of a partial last tile

    def tiled(table: pa.Table):
        ids = table.column("member_id")
        for k in range(tiles + (rest > 0)):
            part = table if k < tiles else table.filter(pc.is_in(ids, value_set=last))
            suffix = pa.scalar(f"x{k}")
            yield part.set_column(
                part.schema.get_field_index("member_id"),
                "member_id",
                pc.binary_join_element_wise(part.column("member_id"), suffix, ""),
            )

    copy.curated_dir.mkdir(parents=True)
    pq.write_table(pa.concat_tables(tiled(base)), copy.curated_dir / "members.parquet")
    copy.offline_dir.mkdir(parents=True)
    for name in SNAPSHOT_TABLES:
        table = pq.read_table(settings.offline_dir / f"{name}.parquet")
        times = pc.unique(table.column("event_timestamp")).sort()
        with pq.ParquetWriter(copy.offline_dir / f"{name}.parquet", table.schema) as out:
            for t in times:
                snapshot = table.filter(pc.equal(table.column("event_timestamp"), t))
                for part in tiled(snapshot):
                    out.write_table(part, row_group_size=OFFLINE_ROW_GROUP)
    return copy


def churn_section(settings, model, members: int, drivers_members: int, scratch: Path) -> dict:
    from features.store import latest_features
    from training.datasets import context
    from training.distributed import churn_scores

    world = tiled_world(settings, members, scratch)
    # best of two: the first run also pays the page cache and one-off imports
    list_s, scores = _timed(lambda: churn_scores(world, "local", drivers=False, model=model), repeat=2)
    assert len(scores) == members, (len(scores), members)
    ctx = context(world)
    frame = latest_features(world, ctx.store, "churn_v1", pd.Timestamp(ctx.end).tz_localize("UTC"))
    M = model.features_.to_numpy(frame)
    booster = model.booster_.booster_
    bare_s, _ = _timed(lambda: booster.predict(M), repeat=2)
    out = {
        "members": members,
        "m1_churn_list_s": round(list_s, 1),
        "churn_rows_per_s": round(members / list_s),
        "bare_rows_per_s": round(len(M) / bare_s),
        "churn_over_bare": round((members / list_s) / (len(M) / bare_s), 2),
    }
    small = tiled_world(settings, drivers_members, scratch / "drivers")
    drivers_s, scored = _timed(lambda: churn_scores(small, "local", drivers=True, model=model))
    assert scored["top_driver"].notna().any()
    Ms = M[:drivers_members]
    shap_s, _ = _timed(lambda: (booster.predict(Ms), booster.predict(Ms, pred_contrib=True)))
    out |= {
        "drivers_members": drivers_members,
        "churn_drivers_s": round(drivers_s, 1),
        "bare_shap_s": round(shap_s, 1),
        "churn_drivers_over_bare_shap": round(shap_s / drivers_s, 2),
    }
    return out


def nbo_section(settings) -> dict:
    from kernel.curated import load_curated
    from models.uplift import pair_features
    from serving.runtime import DecisionRuntime

    runtime = DecisionRuntime(settings)
    ids = load_curated(settings, "members")["member_id"].tolist()
    batch_s, (pairs, skipped) = _timed(lambda: runtime.score_batch(ids, None))
    model = runtime.models["uplift"]
    feats = runtime._batch_read(ids, runtime.now(None))
    rows = pair_features(feats[feats["tier"].notna()], runtime.offers)
    M = model.features_.to_numpy(rows)
    bare_s, _ = _timed(lambda: model.predict_matrix(M), repeat=2)
    return {
        "nbo_members": len(ids),
        "nbo_pairs_scored": len(M),
        "nbo_batch_s": round(batch_s, 2),
        "nbo_bare_predict_s": round(bare_s, 2),
        # members/s of the batch over pair rows/s of the bare predict, both counted in pairs
        "nbo_batch_over_bare": round(bare_s / batch_s, 2),
        "skipped": sum(skipped.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--drivers-members", type=int, default=100_000)
    args = parser.parse_args()

    from kernel.constants import CHAMPION
    from kernel.model_store import load_estimator
    from kernel.settings import Settings
    from training.tracking import configure

    settings = Settings()
    configure(settings)
    model = load_estimator(settings.model_name("churn"), CHAMPION)
    with tempfile.TemporaryDirectory(prefix="batch_bench_") as tmp:
        churn = churn_section(settings, model, args.members, args.drivers_members, Path(tmp))
    print("churn:", churn, flush=True)
    nbo = nbo_section(settings)
    print("nbo batch:", nbo, flush=True)
    keys = {**churn, **nbo}
    print(
        "SUMMARY batch_bench "
        + " ".join(
            f"{k}={keys[k]}"
            for k in (
                "churn_over_bare",
                "churn_drivers_over_bare_shap",
                "nbo_batch_over_bare",
                "m1_churn_list_s",
                "members",
                "churn_rows_per_s",
                "bare_rows_per_s",
            )
        )
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
