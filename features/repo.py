"""The whole Feast repo for one spec: entity, sources, views, on-demand view, services."""

from __future__ import annotations

from features.entities import member
from features.on_demand import request_recency_view
from features.repo_spec import RepoSpec
from features.services import feature_services
from features.views import feature_views


def feast_objects(spec: RepoSpec) -> list:
    """Every object ``FeatureStore.apply`` registers (sources come with their views)."""
    views = feature_views(spec)
    recency = request_recency_view(views["member_rfm"], views["member_realtime"])
    return [member, *views.values(), recency, *feature_services(views, recency).values()]
