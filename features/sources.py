"""Offline sources: the snapshot tables written by ``training.featurize``; one push source.

Parquet files on the embedded default, PostgreSQL tables on the production profile: the
profile picks the source class, the feature views on top are the same.
"""

from __future__ import annotations

from feast import FileSource, PushSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

from features.repo_spec import RepoSpec
from kernel.constants import EVENT_TIMESTAMP

SNAPSHOT_TABLES = (
    "member_rfm",
    "member_profile",
    "member_affinity",
    "member_points",
    "member_engagement",
    "member_btyd",
)


def snapshot_source(spec: RepoSpec, name: str) -> FileSource | PostgreSQLSource:
    if spec.production:
        return PostgreSQLSource(name=f"{name}_source", table=spec.table_prefix + name, timestamp_field=EVENT_TIMESTAMP)
    path = str(spec.offline_dir / f"{name}.parquet")
    return FileSource(name=f"{name}_source", path=path, timestamp_field=EVENT_TIMESTAMP)


def member_events_push(spec: RepoSpec) -> PushSource:
    """Real-time member events (purchases, opens, opt-outs) pushed by the service; the batch
    source keeps the history so training sets see the same values the service saw."""
    return PushSource(name="member_events_push", batch_source=snapshot_source(spec, "member_realtime"))
