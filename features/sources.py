"""Offline sources: the snapshot tables written by ``training.featurize``; one push source.

Parquet files on the embedded default, PostgreSQL tables on the production profile: the
profile picks the source class, the feature views on top are the same.
"""

from feast import FileSource, PushSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

from training.settings import Profile, get_settings

_settings = get_settings()


def _snapshot_source(name: str) -> FileSource | PostgreSQLSource:
    if _settings.profile is Profile.production:
        return PostgreSQLSource(
            name=f"{name}_source", table=_settings.offline_table(name), timestamp_field="event_timestamp"
        )
    path = str(_settings.offline_dir / f"{name}.parquet")
    return FileSource(name=f"{name}_source", path=path, timestamp_field="event_timestamp")


member_rfm_source = _snapshot_source("member_rfm")
member_profile_source = _snapshot_source("member_profile")
member_affinity_source = _snapshot_source("member_affinity")
member_points_source = _snapshot_source("member_points")
member_engagement_source = _snapshot_source("member_engagement")
member_consent_source = _snapshot_source("member_consent")

# Real-time member events (purchases, opens, opt-outs) pushed by the service; the batch
# source keeps the history so training sets see the same values the service saw.
member_events_push = PushSource(name="member_events_push", batch_source=_snapshot_source("member_realtime"))
