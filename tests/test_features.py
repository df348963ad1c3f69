import numpy as np
import pandas as pd
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
