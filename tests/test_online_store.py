"""The embedded online store writes exactly Feast's SQLite rows, in key order."""

from __future__ import annotations

import math
import sqlite3
from datetime import timedelta

import pyarrow as pa
import pytest
from feast import Entity, FeatureView, Field, FileSource, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.types import Bool, Float32, Float64, Int32, Int64, String
from feast.utils import _convert_arrow_to_proto
from feast.value_type import ValueType

from features.online_sqlite import (
    OrderedSqliteOnlineStore,
    OrderedSqliteOnlineStoreConfig,
    cells,
    entity_key_bytes,
    epochs,
)

pytestmark = pytest.mark.unit

MEMBER = Entity(name="member", join_keys=["member_id"], value_type=ValueType.STRING)
FEATURES = [
    Field(name="tier", dtype=String),
    Field(name="orders", dtype=Int64),
    Field(name="spend", dtype=Float64),
    Field(name="opted_in", dtype=Bool),
    Field(name="level", dtype=Int32),
    Field(name="share", dtype=Float32),
]
VIEW = FeatureView(
    name="member_view",
    entities=[MEMBER],
    ttl=timedelta(days=14),
    schema=[Field(name="member_id", dtype=String), *FEATURES],
    source=FileSource(path="unused.parquet", timestamp_field="event_timestamp"),
    online=True,
)


def config(tmp_path, store_config) -> RepoConfig:
    return RepoConfig(
        project="p",
        provider="local",
        registry=str(tmp_path / "registry.db"),
        online_store=store_config,
        entity_key_serialization_version=3,
        repo_path=str(tmp_path),
    )


def latest(ids: list[int], round_: int) -> pa.Table:
    """One row per member, in no key order, with nulls and NaN and two snapshot times."""
    return pa.table(
        {
            "member_id": [f"M{i:07d}" if i % 5 else f"m-ü{i}" for i in ids],  # ids of two lengths
            "tier": [None if i % 6 == 0 else ["Regular", "Silver", "Gold"][(i + round_) % 3] for i in ids],
            "orders": pa.array([None if i % 4 == 0 else i * 3 + round_ for i in ids], pa.int64()),
            "spend": [math.nan if i % 7 == 0 else None if i % 9 == 0 else i * 1.1 + round_ for i in ids],
            "opted_in": [None if i % 8 == 0 else bool((i + round_) % 2) for i in ids],
            "level": pa.array([i % 4 for i in ids], pa.int32()),
            "share": pa.array([i / 3 for i in ids], pa.float32()),
            "event_timestamp": pa.array(
                [1_709_251_200_000_000 + (i % 2) * 86_400_000_000 + round_ for i in ids], pa.timestamp("us", "UTC")
            ),
        }
    )


def table(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM p_member_view ORDER BY entity_key, feature_name").fetchall()


def stores(tmp_path):
    feast_cfg = config(tmp_path, SqliteOnlineStoreConfig(path=str(tmp_path / "feast.db")))
    ours_cfg = config(tmp_path, OrderedSqliteOnlineStoreConfig(path=str(tmp_path / "ours.db")))
    feast, ours = SqliteOnlineStore(), OrderedSqliteOnlineStore()
    for store, cfg in ((feast, feast_cfg), (ours, ours_cfg)):
        store.update(cfg, [], [VIEW], [], [], partial=False)
    return (feast, feast_cfg), (ours, ours_cfg)


def feast_writes(store, cfg, rows: pa.Table) -> None:
    """What Feast's materialisation does with the rows it read: convert, then write."""
    protos = _convert_arrow_to_proto(rows, VIEW, {"member_id": ValueType.STRING})
    store.online_write_batch(cfg, VIEW, protos, progress=None)


def test_entity_keys_are_feasts_bytes():
    for value in ("M0000001", "M1", "кл-ü-42", "", "x" * 300):
        key = EntityKeyProto(join_keys=["member_id"], entity_values=[ValueProto(string_val=value)])
        assert entity_key_bytes("member_id", value) == serialize_entity_key(key, entity_key_serialization_version=3)


@pytest.mark.parametrize(
    ("values", "arrow_type", "value_type"),
    [
        ([1.5, 0.0, -2.25, None, math.nan, 1e300, 3.0], pa.float64(), ValueType.DOUBLE),
        ([1.5, 0.0, None, 1 / 3], pa.float32(), ValueType.FLOAT),
        ([0, -1, 2**40, None, 7], pa.int64(), ValueType.INT64),
        ([0, -1, 2**31 - 1], pa.int64(), ValueType.INT64),  # no nulls: numpy ints in Feast's path
        ([0, -5, None], pa.int32(), ValueType.INT32),
        (["Gold", "", None, "ü", "3"], pa.string(), ValueType.STRING),
        ([True, False, None], pa.bool_(), ValueType.BOOL),
        ([True, False], pa.bool_(), ValueType.BOOL),
        ([None, None], pa.float64(), ValueType.DOUBLE),
    ],
)
def test_values_and_texts_are_feasts(values, arrow_type, value_type):
    column = pa.chunked_array([pa.array(values, arrow_type)])
    protos = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), value_type)
    expected = [p.SerializeToString() for p in protos], [extract_text_and_num(p, False)[0] for p in protos]
    assert cells(column, value_type) == expected


def test_epochs_are_what_feasts_writer_stores():
    column = pa.chunked_array(
        [pa.array([0, 1_709_251_200_123_456, None, 1_709_251_200_123_456], pa.timestamp("us", "UTC"))]
    )
    assert epochs(column) == [0, 1_709_251_200, None, 1_709_251_200]


def test_latest_rows_are_feasts_rows_and_updates_replace_them(tmp_path):
    (feast, feast_cfg), (ours, ours_cfg) = stores(tmp_path)
    for round_, ids in enumerate([[5, 3, 9, 1, 14, 40, 12], [3, 20, 7, 5, 63]]):  # round 1 updates some
        feast_writes(feast, feast_cfg, latest(ids, round_))
        assert ours.write_latest(ours_cfg, VIEW, latest(ids, round_), batch_rows=2) == len(ids)
    assert table(tmp_path / "ours.db") == table(tmp_path / "feast.db")
    assert len(table(tmp_path / "ours.db")) == 10 * len(FEATURES)
    assert ours.write_latest(ours_cfg, VIEW, latest([], 0), batch_rows=2) == 0


def test_rows_are_written_in_key_order_whole_members_per_transaction(tmp_path):
    """The rows reach SQLite sorted by (entity key, feature); each commit holds whole members,
    so a reader never sees half a member's view updated."""
    _, (ours, cfg) = stores(tmp_path)
    conn = ours._get_conn(cfg)
    written, seen = [], []
    conn.create_function("note", 2, lambda key, feature: written.append((key, feature)))
    conn.execute(
        "CREATE TRIGGER noted AFTER INSERT ON p_member_view BEGIN SELECT note(new.entity_key, new.feature_name); END"
    )
    conn.set_trace_callback(lambda sql: seen.append(len(table(tmp_path / "ours.db"))))
    ours.write_latest(cfg, VIEW, latest(list(range(30, 0, -1)), 0), batch_rows=4)
    conn.set_trace_callback(None)
    assert written == sorted(written) and len(written) == 30 * len(FEATURES)
    assert all(n % len(FEATURES) == 0 for n in seen) and len(set(seen)) > 3
