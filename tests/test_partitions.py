"""Member partitions of the feature build: pure logic on hand-made tables, no world."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from models.btyd import BuyTillYouDie, rfm_summary
from training.featurize import _window
from training.partitions import member_partition, partition_count, split_table

pytestmark = pytest.mark.unit


def test_a_member_keeps_its_partition_whatever_the_order_and_company():
    ids = np.array([f"M{k:07d}" for k in range(20_000)], dtype=object)
    parts = member_partition(ids, 8)
    assert parts.min() == 0 and parts.max() == 7
    # balanced: a hash, not the id's prefix
    counts = np.bincount(parts, minlength=8)
    assert counts.min() > 0.9 * len(ids) / 8
    shuffled = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(member_partition(ids[shuffled], 8), parts[shuffled])
    np.testing.assert_array_equal(member_partition(ids[:10], 8), parts[:10])
    assert (member_partition(ids, 1) == 0).all()
    assert partition_count(1, 25_000) == 1 and partition_count(25_001, 25_000) == 2 and partition_count(0, 10) == 1


def test_split_keeps_every_row_each_member_whole_and_in_its_order(tmp_path, monkeypatch):
    import training.partitions as partitions

    monkeypatch.setattr(partitions, "READ_BATCH_ROWS", 37)  # many batches: a member's rows span several
    rng = np.random.default_rng(1)
    n = 1000
    table = pd.DataFrame(
        {
            "member_id": rng.choice([f"m{k}" for k in range(60)], n),
            "seq": np.arange(n),
            "amount": rng.random(n),
            "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
        }
    )
    path = tmp_path / "transactions.parquet"
    table.to_parquet(path, index=False)
    files = split_table(path, 97, tmp_path / "parts")  # more partitions than members: some stay empty
    assert len(files) == 97
    parts = [pd.read_parquet(f) for f in files]
    assert any(part.empty for part in parts)
    # the same columns and types in every file, the empty ones included
    assert all(pq.read_schema(f).equals(pq.read_schema(files[0])) for f in files)
    together = pd.concat(parts, ignore_index=True)
    assert len(together) == n and sorted(together["seq"]) == list(range(n))
    for k, part in enumerate(parts):
        assert (member_partition(part["member_id"].to_numpy(), 97) == k).all()
        for _, rows in part.groupby("member_id"):
            assert rows["seq"].is_monotonic_increasing  # a member's rows stay in their order
    pd.testing.assert_frame_equal(together.sort_values("seq", ignore_index=True), table)


def test_window_slices_rows_in_time_order_as_a_filter_would():
    rng = np.random.default_rng(2)
    events = pd.DataFrame({"ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 400, 500), unit="D")})
    events["v"] = np.arange(len(events))
    ordered = events.sort_values("ts", kind="stable", ignore_index=True)
    for start, end in [(None, "2024-06-01"), ("2024-03-01", "2024-03-31"), ("2024-05-01", None), ("2025-06-01", None)]:
        s, e = (pd.Timestamp(x) if x else None for x in (start, end))
        after = events["ts"] >= s if s is not None else True
        want = events[after & ((events["ts"] < e) if e is not None else True)]
        for frame in (events, ordered):  # the unordered one takes the mask
            got = _window(frame, s, e)
            assert sorted(got["v"]) == sorted(want["v"])
    assert _window(ordered, pd.Timestamp("2024-05-01"), pd.Timestamp("2024-04-01")).empty  # an empty window


def test_buy_till_you_die_fits_the_same_whatever_the_members_order():
    rng = np.random.default_rng(4)
    start = pd.Timestamp("2024-01-01")
    rows = [
        (f"m{k}", start + pd.Timedelta(days=int(d)), 10 + k % 9)
        for k in range(300)
        for d in np.flatnonzero(rng.random(300) < rng.gamma(2, 0.02))
    ]
    summary = rfm_summary(pd.DataFrame(rows, columns=["member_id", "ts", "amount"]), start + pd.Timedelta(days=300))
    a = BuyTillYouDie().fit(summary)
    b = BuyTillYouDie().fit(summary.sample(frac=1.0, random_state=5))
    assert a.bg_.params_ == b.bg_.params_ and a.gg_.params_ == b.gg_.params_
    pd.testing.assert_frame_equal(a.score(summary, 90), b.score(summary, 90))
