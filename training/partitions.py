"""A programme's curated history split into member partitions.

Everything a member's feature snapshots need is that member's own rows, so a build that
works one partition at a time holds one partition's history in memory, not the programme's.
A member's partition is a hash of the id: stable across runs and tables, no member split.
Each table is read once, in batches, and appended to its partitions' files, so the split
itself holds one batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kernel.constants import MEMBER_ID

READ_BATCH_ROWS = 1_000_000  # rows of a curated table held at once while splitting
PARTITION_HASH_KEY = "member-partition"  # 16 bytes, fixed: a member keeps its partition


def partition_count(members: int, partition_members: int) -> int:
    """How many partitions hold ``members`` with about ``partition_members`` in each (at least one)."""
    return max(1, math.ceil(members / max(partition_members, 1)))


def member_partition(ids, n: int) -> np.ndarray:
    """The partition (0..n-1) of each member id."""
    if n <= 1:
        return np.zeros(len(ids), dtype=np.int64)
    h = pd.util.hash_pandas_object(pd.Series(np.asarray(ids, dtype=object)), index=False, hash_key=PARTITION_HASH_KEY)
    return (h.to_numpy() % np.uint64(n)).astype(np.int64)


def split_table(path: Path, n: int, out_dir: Path) -> list[Path]:
    """``path`` (a parquet table with a ``member_id`` column) as ``n`` files in ``out_dir``, one
    per partition; rows keep their order within a member. Returns the files by partition."""
    source = pq.ParquetFile(path)
    schema = source.schema_arrow
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / f"{path.stem}-{k:05d}.parquet" for k in range(n)]
    writers = [pq.ParquetWriter(f, schema) for f in files]
    try:
        for batch in source.iter_batches(batch_size=READ_BATCH_ROWS):
            part = member_partition(batch.column(MEMBER_ID).to_numpy(zero_copy_only=False), n)
            order = np.argsort(part, kind="stable")  # stable: each member's rows stay in order
            grouped = pa.Table.from_batches([batch]).take(pa.array(order))
            bounds = np.searchsorted(part[order], np.arange(n + 1))
            for k in range(n):
                if bounds[k + 1] > bounds[k]:
                    writers[k].write_table(grouped.slice(bounds[k], bounds[k + 1] - bounds[k]))
    finally:
        for w in writers:
            w.close()
    return files
