"""The embedded online store: Feast's SQLite store, materialised in key order.

Feast's materialisation converts every value to a protobuf object through a generic
per-value dispatch, then its SQLite writer upserts one row per value in the order the rows
arrive (no order of the key: the offline read orders by time). Each upsert descends the view
table's two B-trees (primary key, entity-key index) at a random place, so once they outgrow the
page cache the cost of a row grows with the programme (12.9x the time for 10x the members).

:meth:`OrderedSqliteOnlineStore.write_latest` writes a view's newest rows (one per member,
from the offline store's ``pull_latest_from_table_or_query``, as Feast's own materialisation
reads them) sorted by the serialised entity key, a column at a time, so both B-trees are walked
once in order. The rows are Feast's, byte for byte (test: ``tests/test_online_store.py``), and
Feast reads them as its own; other writes (the service's pushes) go through Feast's writer.
"""

from __future__ import annotations

import math
import struct
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView, RepoConfig
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
    adapt_datetime_epoch,
)
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import _coerce_datetime, to_naive_utc
from feast.value_type import ValueType

COLUMNS = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")
# value type -> the Value field it fills and the Python type Feast's conversion applies
SCALARS = {
    ValueType.DOUBLE: ("double_val", float),
    ValueType.FLOAT: ("float_val", float),
    ValueType.INT64: ("int64_val", int),
    ValueType.INT32: ("int32_val", int),
    ValueType.STRING: ("string_val", str),
    ValueType.BOOL: ("bool_val", bool),
}


class OrderedSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Feast's SQLite online store settings; the type names this store."""

    type: Literal["features.online_sqlite.OrderedSqliteOnlineStore"] = "features.online_sqlite.OrderedSqliteOnlineStore"


class OrderedSqliteOnlineStore(SqliteOnlineStore):
    """:class:`SqliteOnlineStore` whose materialisation writes each view in key order."""

    @staticmethod
    def writes_in_order(config: RepoConfig, view: FeatureView) -> bool:
        """Whether :meth:`write_latest` covers ``view``: one string join key, scalar features
        under their own names, and none of the optional columns (vectors, numeric values)."""
        source = view.batch_source
        return (
            config.entity_key_serialization_version == 3
            and not config.online_store.vector_enabled
            and not config.online_store.enable_openai_compatible_store
            and len(view.entity_columns) == 1
            and view.entity_columns[0].dtype.to_value_type() == ValueType.STRING
            and all(f.dtype.to_value_type() in SCALARS for f in view.features)
            and source is not None
            and not source.field_mapping
        )

    def write_latest(self, config: RepoConfig, view: FeatureView, latest: pa.Table, batch_rows: int) -> int:
        """Write ``latest`` (one row per member: join key, features, event and created time)
        into ``view``'s table in key order, ``batch_rows`` members a transaction (a reader sees
        each member's view all old or all new). Returns the members written."""
        if not latest.num_rows:
            return 0
        join_key = view.entity_columns[0].name
        keys = pa.array([entity_key_bytes(join_key, m) for m in latest.column(join_key).to_pylist()], type=pa.binary())
        order = pc.sort_indices(keys)
        latest, keys = latest.take(order), keys.take(order)
        conn = self._get_conn(config)
        upsert = _upsert(_table_id(config.project, view, config.registry.enable_online_feature_view_versioning))
        source = view.batch_source
        for start in range(0, latest.num_rows, batch_rows):
            part = latest.slice(start, batch_rows)
            event = epochs(part.column(source.timestamp_field))
            created = (
                epochs(part.column(source.created_timestamp_column))
                if source.created_timestamp_column
                else [None] * part.num_rows
            )
            key = keys.slice(start, batch_rows).to_pylist()
            rows = []
            for feature in view.features:
                values, texts = cells(part.column(feature.name), feature.dtype.to_value_type())
                name = feature.name
                rows += zip(key, [name] * part.num_rows, values, texts, event, created, strict=True)
            rows.sort(key=lambda r: (r[0], r[1]))  # built feature by feature: into (member, feature) order
            with conn:
                conn.executemany(upsert, rows)
        return latest.num_rows


def _upsert(table: str) -> str:
    """Feast's statement (``SqliteOnlineStore.online_write_batch``) for these columns."""
    update = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[2:])
    return (
        f"INSERT INTO {_quote_id(table)} ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?) "
        f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {update}"
    )


_ONE_STRING_KEY = struct.pack("<II", 1, ValueType.STRING.value)


def entity_key_bytes(join_key: str, value: str) -> bytes:
    """Feast's ``serialize_entity_key`` (version 3) of one string join key."""
    name, text = join_key.encode(), value.encode()
    return b"".join(
        (
            _ONE_STRING_KEY,
            struct.pack("<I", len(name)),
            name,
            struct.pack("<II", ValueType.STRING.value, len(text)),
            text,
        )
    )


def cells(column: pa.ChunkedArray, value_type: ValueType) -> tuple[list[bytes], list[str | None]]:
    """Each value's serialised ``Value`` and its text, as Feast's conversion and SQLite writer
    make them: nulls and NaN are an empty ``Value`` (no text)."""
    field, cast = SCALARS[value_type]
    values, texts = [], []
    for v in column.to_pylist():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            values.append(b"")
            texts.append(None)
            continue
        proto = ValueProto(**{field: cast(v)})
        values.append(proto.SerializeToString())
        stored = getattr(proto, field)  # the text is of the stored value (a float32 is rounded)
        texts.append(stored if value_type == ValueType.STRING else str(stored))
    return values, texts


def epochs(column: pa.ChunkedArray) -> list[int | None]:
    """Epoch seconds as Feast's SQLite adapter stores a timestamp column (naive UTC, whole
    seconds), converted once per distinct time (a snapshot view has one or a few)."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    # the steps of Feast's conversion and writer, the adapter's reading of a naive time included
    distinct = [
        None if pd.isna(t) else adapt_datetime_epoch(to_naive_utc(_coerce_datetime(t)))
        for t in pd.to_datetime(encoded.dictionary.to_numpy(zero_copy_only=False))
    ]
    return [None if i is None else distinct[i] for i in encoded.indices.to_pylist()]
