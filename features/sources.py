"""Offline sources: the snapshot tables written by ``training.featurize``; one push source."""

from feast import FileSource, PushSource

from training.settings import get_settings

_offline = get_settings().offline_dir


def _snapshot_source(name: str) -> FileSource:
    return FileSource(name=f"{name}_source", path=str(_offline / f"{name}.parquet"), timestamp_field="event_timestamp")


member_rfm_source = _snapshot_source("member_rfm")
member_profile_source = _snapshot_source("member_profile")
member_affinity_source = _snapshot_source("member_affinity")
member_points_source = _snapshot_source("member_points")
member_engagement_source = _snapshot_source("member_engagement")
member_consent_source = _snapshot_source("member_consent")

# Real-time member events (purchases, opens, opt-outs) pushed by the service; the batch
# source keeps the history so training sets see the same values the service saw.
member_events_push = PushSource(name="member_events_push", batch_source=_snapshot_source("member_realtime"))
