"""Streamed validation: deduplication across batches, uniqueness and references held across
slices, the same curated tables whatever the slice size; the data steps' memory per member
falling as the programme grows. Small simulated worlds, no training."""

import tracemalloc

import numpy as np
import pandas as pd
import pytest

import training.data.validation as validation
from kernel.contracts import validate
from kernel.settings import Settings
from training.data.ingest import add_batch, simulate_dataset
from training.data.validation import (
    CONFLICT,
    KEEP,
    SAME,
    UPDATED,
    HashSet,
    decide_duplicates,
    validate_dataset,
)


@pytest.mark.unit
def test_hash_set_answers_like_isin_as_it_grows():
    rng = np.random.default_rng(0)
    kept, everything = HashSet(), np.empty(0, np.uint64)
    for _ in range(5):
        batch = rng.integers(0, 2**63, 500, dtype=np.uint64)
        probe = np.concatenate([batch[:100], rng.integers(0, 2**63, 100, dtype=np.uint64)])
        np.testing.assert_array_equal(kept.contains(probe), np.isin(probe, everything))
        kept.add(batch)
        everything = np.concatenate([everything, batch])
    assert len(kept) == len(everything)
    assert kept.contains(everything).all()


def _reference_status(k, h, order, t):
    """decide_duplicates by hand: per key, the winner is the newest, then earliest batch, then first row."""

    def newest_first(j):
        if t is None:
            return (0, 0)
        return (1, 0) if np.isnat(t[j]) else (0, -t[j].astype("int64"))

    status, w_order = [], []
    for i in range(len(k)):
        rows = [j for j in range(len(k)) if k[j] == k[i]]
        w = min(rows, key=lambda j: (*newest_first(j), order[j], j))
        w_order.append(order[w])
        if order[i] == order[w]:
            status.append(KEEP)
        elif h[i] == h[w]:
            status.append(SAME)
        elif t is not None and t[i] < t[w]:
            status.append(UPDATED)
        else:
            status.append(CONFLICT)
    return np.array(status), np.array(w_order)


@pytest.mark.unit
@pytest.mark.parametrize("versioned", [False, True])
def test_duplicate_decisions_match_the_rule_row_by_row(versioned):
    rng = np.random.default_rng(3)
    n = 300
    k = rng.integers(0, 40, n).astype(np.uint64)
    h = k * 10 + rng.integers(0, 2, n).astype(np.uint64)  # some repeats carry other content
    order = rng.integers(0, 4, n).astype(np.int32)
    t = None
    if versioned:
        t = np.datetime64("2024-01-01") + rng.integers(0, 3, n).astype("timedelta64[D]")
        t = t.astype("datetime64[ns]")
        t[rng.random(n) < 0.1] = np.datetime64("NaT")
    status, w_order = decide_duplicates(k, h, order, t)
    want_status, want_order = _reference_status(k, h, order, t)
    np.testing.assert_array_equal(status, want_status)
    np.testing.assert_array_equal(w_order, want_order)
    assert set(np.unique(status)) >= {KEEP, SAME, CONFLICT}


@pytest.fixture(scope="module")
def batched_world(tmp_path_factory):
    """A 300-member simulated world plus a second batch holding repeats (same content),
    conflicts (same key, other content), member updates and new rows."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("batched"), dataset="simulated")
    simulate_dataset(settings, 300, progress=False)
    raw = {t: pd.read_parquet(settings.raw_dir / f"{t}.parquet") for t in ("members", "transactions", "points_ledger")}
    txn = raw["transactions"]
    changed = txn.iloc[10:15].assign(amount=txn["amount"].iloc[10:15] + 1)  # conflicts
    fresh = txn.iloc[:20].assign(order_id=lambda d: "new-" + d["order_id"])  # new rows
    members = raw["members"].iloc[:6].copy()
    members.loc[members.index[:3], "consent_updated_at"] += pd.Timedelta(days=1)  # newer versions: updates
    members.loc[members.index[:3], "consent_email"] = ~members["consent_email"].iloc[:3]
    add_batch(
        settings,
        {
            "transactions": pd.concat([txn.iloc[:10], changed, fresh], ignore_index=True),
            "members": members,  # 3 updated, 3 repeated as they were
            "points_ledger": raw["points_ledger"].iloc[:7],
        },
        "test",
        pd.Timestamp(txn["ts"].max()),
    )
    return settings


def _outputs(settings):
    tables = {p.stem: pd.read_parquet(p) for p in sorted(settings.curated_dir.glob("*.parquet"))}
    quarantine = {p.stem: pd.read_parquet(p) for p in sorted(settings.quarantine_dir.glob("*.parquet"))}
    return tables, quarantine


def test_sliced_validation_of_batches_equals_one_pass_and_never_holds_a_table(batched_world, monkeypatch):
    whole = validate_dataset(batched_world)
    tables, quarantine = _outputs(batched_world)
    txn, members, ledger = whole["transactions"], whole["members"], whole["points_ledger"]
    assert (txn["duplicates_skipped"], txn["quarantined_conflict"]) == (10, 5)
    assert txn["valid"] == txn["raw"] - 15
    assert (members["updated"], members["duplicates_skipped"], members["quarantined_conflict"]) == (3, 3, 0)
    assert members["valid"] == 300 and ledger["duplicates_skipped"] == 7
    assert set(quarantine) == {"transactions__conflict"}
    assert quarantine["transactions__conflict"]["_reason"].str.contains("already imported in batch initial").all()
    # the update wins: the newer consent of the first three members is curated
    curated = tables["members"].set_index("member_id")
    assert curated.loc[curated["batch_id"] == "b0001"].shape[0] == 3

    seen = []

    def spy(table, df, **kw):
        seen.append(len(df))
        return validate(table, df, **kw)

    monkeypatch.setattr(validation, "VALIDATE_CHUNK_ROWS", 500)
    monkeypatch.setattr(validation, "validate", spy)
    assert validate_dataset(batched_world) == whole
    assert max(seen) <= 500 and sum(seen) > 500 * 40  # many slices, none larger than one
    sliced_tables, sliced_quarantine = _outputs(batched_world)
    assert sliced_tables.keys() == tables.keys() and sliced_quarantine.keys() == quarantine.keys()
    for name, df in tables.items():
        pd.testing.assert_frame_equal(sliced_tables[name], df, check_dtype=True)
    for name, df in quarantine.items():
        pd.testing.assert_frame_equal(sliced_quarantine[name], df)


def _peak_python_bytes(step) -> int:
    """Peak bytes allocated while ``step`` runs, as tracemalloc sees them (numpy and pandas
    buffers included; Arrow's own pool, which reads a parquet slice, is not)."""
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_per_member_of_the_data_steps_falls_as_the_programme_grows(tmp_path, monkeypatch):
    """Validation and the feature build at 500 and 2,000 members with a slice and a member
    partition smaller than both programmes: four times the members take far less than four
    times the memory (the slice and the partition set it, not the programme)."""
    import training.featurize as featurize
    import training.partitions as partitions

    monkeypatch.setattr(validation, "VALIDATE_CHUNK_ROWS", 2_500)
    monkeypatch.setattr(partitions, "READ_BATCH_ROWS", 2_500)
    monkeypatch.setattr(featurize, "BTYD_MAX_FIT_MEMBERS", 125)
    peaks: dict[str, dict[int, int]] = {"validate": {}, "features build": {}}
    for n in (500, 2_000):
        settings = Settings(
            data_dir=tmp_path / str(n), dataset="simulated", feature_partition_members=125, snapshot_every_days=60
        )
        simulate_dataset(settings, n, progress=False)
        steps = {
            "validate": lambda s=settings: validate_dataset(s),
            "features build": lambda s=settings: featurize.build_feature_tables(s, progress=False),
        }
        if n == 500:  # once untraced first: imports and first-call caches are not the programme's
            for step in steps.values():
                step()
        for name, step in steps.items():
            peaks[name][n] = _peak_python_bytes(step)
    for step, peak in peaks.items():
        per_member = {n: round(b / n) for n, b in peak.items()}
        assert peak[2_000] < 1.6 * peak[500], (step, per_member)
