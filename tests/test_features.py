import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.store import online_features, training_frame
from training.featurize import health_quadrant, lifecycle_stage


def _orders(settings):
    txn = pd.read_parquet(settings.curated_dir / "transactions.parquet")
    return txn.groupby(["member_id", "order_id"], as_index=False).agg(ts=("ts", "min"), amount=("amount", "sum"))


def test_training_set_is_point_in_time_correct(settings, pipeline):
    store = pipeline["store"]
    orders = _orders(settings)
    members = pd.read_parquet(settings.curated_dir / "members.parquet")
    rng = np.random.default_rng(0)
    ids = rng.choice(members["member_id"], 300, replace=False)
    # label timestamps between snapshots, so the join must pick the earlier snapshot
    ts = pd.Timestamp(pipeline["meta"]["cutoff"], tz="UTC") - pd.to_timedelta(rng.integers(0, 200, 300), unit="D")
    entity = pd.DataFrame({"member_id": ids, "event_timestamp": ts, "label": rng.integers(0, 2, 300)})
    df = training_frame(store, entity, "churn_v1")
    assert len(df) == len(entity) and (df["label"].to_numpy() == entity["label"].to_numpy()).all()
    snaps = pd.read_parquet(settings.offline_dir / "member_rfm.parquet")[["member_id", "event_timestamp"]]
    checked = 0
    for row in df.itertuples():
        mine = snaps[(snaps["member_id"] == row.member_id) & (snaps["event_timestamp"] <= row.event_timestamp)]
        if mine.empty or pd.isna(row.monetary_30d):
            assert pd.isna(row.monetary_30d)  # joined later or snapshot too old: missing, not future data
            continue
        snap = mine["event_timestamp"].max().tz_convert(None)
        past = orders[(orders["member_id"] == row.member_id) & (orders["ts"] < snap)]
        # no feature value comes from after the label timestamp
        assert row.last_purchase_ts <= row.event_timestamp.timestamp()
        assert row.monetary_30d == pytest.approx(past.loc[past["ts"] >= snap - pd.Timedelta(days=30), "amount"].sum())
        assert row.frequency_365d == (past["ts"] >= snap - pd.Timedelta(days=365)).sum()
        checked += 1
    assert checked > 150


def test_online_store_serves_latest_snapshot_and_request_time_features(settings, pipeline):
    store, end = pipeline["store"], pipeline["end"]
    offline = pd.read_parquet(settings.offline_dir / "member_rfm.parquet")
    latest = offline[offline["event_timestamp"] == offline["event_timestamp"].max()].set_index("member_id")
    ids = latest.index[:25].tolist()
    request_ts = int(end.timestamp()) + 86400
    online = online_features(store, ids + ["unknown-member"], request_ts).set_index("member_id")
    assert np.allclose(online.loc[ids, "monetary_365d"], latest.loc[ids, "monetary_365d"])
    last = latest.loc[ids, "last_purchase_ts"]
    expected = np.where(last > 0, (request_ts - last) / 86400, 9999.0)  # never bought: sentinel
    assert np.allclose(online.loc[ids, "days_since_last_purchase"], expected)
    assert online.loc[ids, "consent_personalisation"].notna().all()
    assert pd.isna(online.loc["unknown-member", "monetary_365d"])
    assert online.loc["unknown-member", "days_since_last_purchase"] == 9999.0


def test_push_source_updates_real_time_features(settings, pipeline):
    store, end = pipeline["store"], pipeline["end"]
    member = pd.read_parquet(settings.offline_dir / "member_realtime.parquet")["member_id"].iloc[0]
    now = int(end.timestamp()) + 3600
    event = pd.DataFrame(
        {
            "member_id": [member],
            "event_timestamp": [pd.Timestamp(now, unit="s", tz="UTC")],
            "rt_last_event_type": ["purchase"],
            "rt_last_event_ts": [now],
            "rt_last_purchase_ts": [now],
        }
    )
    store.push("member_events_push", event)
    row = online_features(store, [member], now + 1800).iloc[0]
    assert row["rt_last_purchase_ts"] == now
    assert row["days_since_last_purchase"] == pytest.approx(1800 / 86400)


def test_the_online_store_keeps_serving_while_the_daily_load_runs(settings, pipeline, monkeypatch):
    """Feast 0.66's own materialise marks each view MATERIALIZING in the registry while it loads,
    and a reader that refreshes its registry then refuses the view: a live service answered
    degraded for as long as ``daily`` ran. Here a second store (the service's) reads from inside
    every view's load, after each of the registry's writes so far, and must get its features."""
    from features.online_sqlite import OrderedSqliteOnlineStore
    from features.store import get_store, materialize_incremental, serving_rows

    reader = get_store(settings, serving=True)
    members = pd.read_parquet(settings.offline_dir / "member_rfm.parquet")["member_id"].unique()[:5].tolist()
    request_ts = int(pipeline["end"].timestamp())
    assert all(r["monetary_365d"] is not None for r in serving_rows(reader, members, request_ts))
    load = OrderedSqliteOnlineStore.write_latest  # each view's write (the embedded profile)
    read_during = []

    def load_and_read(self, *args, **kwargs):
        reader.refresh_registry()  # what the service's registry cache does when the file changes
        read_during.append([r["monetary_365d"] for r in serving_rows(reader, members, request_ts)])
        return load(self, *args, **kwargs)

    monkeypatch.setattr(OrderedSqliteOnlineStore, "write_latest", load_and_read)
    materialize_incremental(settings, pipeline["end"])
    assert len(read_during) >= 3 and all(None not in values for values in read_during)


@pytest.mark.unit
def test_segment_rules():
    assert list(health_quadrant([3, 3, 0, 0], [2, 0, 2, 0])) == ["active", "low-active", "churn-risk", "silent"]
    stages = lifecycle_stage([30, 200, 200, 800], [5, 5, 90, 5], [100, 100, 100, 100], [50, 50, 50, 50])
    assert list(stages) == ["new", "growth", "decline", "mature"]


@pytest.mark.unit
def test_the_services_recency_rule_is_the_on_demand_views():
    from features.on_demand import days_since_last_purchase, days_since_last_purchase_one

    batch = [1_700_000_000, None, 0, 1_700_100_000, np.nan, 1_699_000_000]
    live = [None, 1_700_050_000, 0, 1_700_000_000, None, 1_699_500_000]
    frame = pd.DataFrame({"last_purchase_ts": batch, "rt_last_purchase_ts": live, "request_ts": 1_700_200_000})
    expected = days_since_last_purchase(frame).tolist()
    assert [days_since_last_purchase_one(b, r, 1_700_200_000) for b, r in zip(batch, live, strict=True)] == expected
    assert expected[2] == expected[4] == 9999.0  # never purchased: the sentinel


@pytest.mark.unit
def test_btyd_snapshot_uses_only_the_past_and_marks_members_without_purchases():
    from training.featurize import NO_PURCHASE_YET, _btyd, fit_btyd

    rng = np.random.default_rng(3)
    start = pd.Timestamp("2024-01-01")
    rows = []
    for k in range(400):  # members buy at their own rate; a quarter stop after 100 days
        rate, stop = rng.gamma(2, 0.03), 100 if k % 4 == 0 else 400
        days = np.flatnonzero(rng.random(400) < rate)
        rows += [(f"m{k}", start + pd.Timedelta(days=int(d)), 20.0 + k % 7) for d in days if d < stop]
    rows += [("clockwork", start + pd.Timedelta(days=d, hours=12), 30.0) for d in range(0, 201, 10)]
    orders = pd.DataFrame(rows, columns=["member_id", "ts", "amount"])
    index = pd.Index([f"m{k}" for k in range(400)] + ["clockwork", "never"], name="member_id")
    t = start + pd.Timedelta(days=250)
    at_t = _btyd(orders, index, t, fit_btyd(orders, t))
    # orders after t (a burst from everyone) change nothing at t: the models are fitted on the past alone
    future = pd.DataFrame({"member_id": index[:-1], "ts": t + pd.Timedelta(days=1), "amount": 500.0})
    both = pd.concat([orders, future])
    pd.testing.assert_frame_equal(_btyd(both, index, t, fit_btyd(both, t)), at_t)
    assert (at_t.loc["never"] == NO_PURCHASE_YET).all()
    # every 10 days through day 200, seen on day 250: a 10-day rhythm, now 5 gaps overdue
    assert at_t.loc["clockwork", "btyd_mean_gap_days"] == pytest.approx(10.0)
    assert at_t.loc["clockwork", "btyd_recency_over_gap"] == pytest.approx(5.0)
    bought = at_t.drop(["never", "clockwork"])
    bought = bought[bought["btyd_p_alive"] != NO_PURCHASE_YET]
    assert bought["btyd_p_alive"].between(0, 1).all() and bought["btyd_p_no_purchase_90d"].between(0, 1).all()
    # members who stopped look less alive than the rest
    stopped = bought.index.str[1:].astype(int) % 4 == 0
    assert bought.loc[stopped, "btyd_p_alive"].mean() < bought.loc[~stopped, "btyd_p_alive"].mean() - 0.2
    # before the history can fit a model, every member gets the marker instead of a guess
    early_t = start + pd.Timedelta(days=3)
    assert fit_btyd(orders, early_t) is None
    early = _btyd(orders, index, early_t, None)
    assert (early == NO_PURCHASE_YET).all().all()


def test_feature_build_by_member_partition_equals_the_whole_one_locally_and_on_dask(
    settings, pipeline, tmp_path, monkeypatch
):
    """Three member partitions, built one after another or on a 2-worker local Dask cluster,
    give the snapshot tables of one pass over the whole history (row order aside); the local
    build never holds more than one partition's history (what bounds its memory)."""
    import shutil

    from features.sources import SNAPSHOT_TABLES
    from training.featurize import History, build_feature_tables

    held = []
    read = History.read.__func__
    monkeypatch.setattr(History, "read", classmethod(lambda cls, files: held.append(r := read(cls, files)) or r))

    part = settings.model_copy(update={"data_dir": tmp_path, "feature_partition_members": 1500, "dask_workers": 2})
    shutil.copytree(settings.curated_dir, part.curated_dir)
    shutil.copy(settings.dataset_dir / "meta.json", part.dataset_dir / "meta.json")
    key = ["member_id", "event_timestamp"]

    def table(s, name):
        return pd.read_parquet(s.offline_dir / f"{name}.parquet").sort_values(key, ignore_index=True)

    for engine in ("local", "dask"):
        counts = build_feature_tables(part, progress=False, engine=engine)
        for name in (*SNAPSHOT_TABLES, "member_consent", "member_realtime"):
            whole, parted = table(settings, name), table(part, name)
            assert counts[name] == len(whole), (engine, name)
            pd.testing.assert_frame_equal(parted, whole, obj=f"{engine} {name}")
        assert not list(part.dataset_dir.glob(".partitions-*"))  # the scratch files are gone
    members = len(pd.read_parquet(settings.curated_dir / "members.parquet"))
    assert len(held) == 3 and sum(len(h.members) for h in held) == members
    assert max(len(h.members) for h in held) <= 1.2 * members / 3  # a hash split: about equal parts


def test_a_daily_snapshot_appended_by_partition_equals_the_builds_and_repeats_as_a_no_op(
    settings, pipeline, tmp_path, monkeypatch
):
    """``append_snapshot`` at the build's last snapshot time recomputes the same rows (three
    member partitions, the tier's start carried from the snapshot before, BG/NBD on the build's
    sample), a repeat changes nothing, and a new day adds one row per joined member while the
    earlier rows stay as they were. It never holds more than one partition's history."""
    import shutil

    from features.sources import SNAPSHOT_TABLES
    from training.featurize import History, append_snapshot, build_feature_tables

    part = settings.model_copy(update={"data_dir": tmp_path, "feature_partition_members": 1500})
    shutil.copytree(settings.curated_dir, part.curated_dir)
    shutil.copy(settings.dataset_dir / "meta.json", part.dataset_dir / "meta.json")
    build_feature_tables(part, progress=False)
    key = ["member_id", "event_timestamp"]

    def tables() -> dict[str, pd.DataFrame]:
        return {
            name: pd.read_parquet(part.offline_dir / f"{name}.parquet").sort_values(key, ignore_index=True)
            for name in (*SNAPSHOT_TABLES, "member_consent", "member_realtime")
        }

    built = tables()
    last = built["member_rfm"]["event_timestamp"].max()
    held = []
    read = History.read.__func__
    monkeypatch.setattr(History, "read", classmethod(lambda cls, files: held.append(r := read(cls, files)) or r))
    for _ in range(2):  # the same day twice: the second run must find nothing to change
        counts = append_snapshot(part, last)
        for name, df in tables().items():
            pd.testing.assert_frame_equal(df, built[name], obj=name)
        assert counts["member_rfm"] == (built["member_rfm"]["event_timestamp"] == last).sum()
    members = len(pd.read_parquet(part.curated_dir / "members.parquet"))
    assert len(held) == 6 and max(len(h.members) for h in held) <= 1.2 * members / 3

    nxt = last + pd.Timedelta(days=7)
    counts = append_snapshot(part, nxt)
    after = tables()
    for name in SNAPSHOT_TABLES:
        new = after[name]["event_timestamp"] == nxt
        assert new.sum() == counts[name] > 0 and not after[name].loc[new, "member_id"].duplicated().any(), name
        pd.testing.assert_frame_equal(after[name][~new].reset_index(drop=True), built[name], obj=name)
    profile = after["member_profile"].set_index(key)
    # a member whose tier did not change keeps the start carried from the build's snapshots
    same = profile.xs(nxt, level=1)["tier_level"] == profile.xs(last, level=1)["tier_level"]
    kept = profile.xs(nxt, level=1)["tier_since_ts"][same] == profile.xs(last, level=1)["tier_since_ts"][same]
    assert same.any() and kept.all()


@pytest.mark.unit
def test_the_bulk_read_of_named_members_takes_each_ones_newest_row_in_the_window(tmp_path):
    """Named members are read from the newest snapshot first, then from the rest of the window;
    the rows must be those of the whole-window read: newest in range, first in file order within
    a snapshot, null outside."""
    import datetime as dt

    from features.store import read_latest_table

    day = pd.Timestamp("2024-03-01", tz="UTC")
    rows = [  # (member, days after day, value)
        ("f", -40, 9.0), ("g", -3, 10.0),  # f: older than the TTL; g: in two older snapshots
        ("a", 0, 1.0), ("b", 0, 2.0), ("c", 0, 3.0), ("g", 0, 11.0),
        ("a", 28, 4.0), ("c", 28, 5.0), ("c", 28, 6.0),  # c twice in one snapshot: the first counts
        ("a", 56, 7.0), ("e", 56, 8.0),  # after as_of: never read
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["member_id", "days", "spend"])
    frame["event_timestamp"] = day + pd.to_timedelta(frame.pop("days"), unit="D")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "v.parquet", row_group_size=2)
    views = [("v", ["spend"], dt.timedelta(days=35))]
    as_of = day + pd.Timedelta(days=30)
    ids = ["c", "a", "b", "g", "e", "f", "zz"]
    named = read_latest_table(tmp_path, views, as_of, ids).to_pandas()
    assert named["member_id"].tolist() == ids
    assert named["spend"].tolist()[:4] == [5.0, 4.0, 2.0, 11.0] and named["spend"].iloc[4:].isna().all()
    whole = read_latest_table(tmp_path, views, as_of).to_pandas().set_index("member_id")
    pd.testing.assert_series_equal(named.set_index("member_id")["spend"], whole["spend"].reindex(ids))
    nothing = read_latest_table(tmp_path, views, day - pd.Timedelta(days=100), ["a"]).to_pandas()
    assert nothing["spend"].isna().all() and len(nothing) == 1
