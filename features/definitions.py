"""Entry point for the ``feast`` CLI: re-exports every object once (see .feastignore)."""

from features.entities import member  # noqa: F401
from features.on_demand import request_recency, request_time  # noqa: F401
from features.services import churn_v1, member_online_v1, offer_v1  # noqa: F401
from features.sources import member_events_push  # noqa: F401
from features.views import (  # noqa: F401
    member_affinity,
    member_consent,
    member_engagement,
    member_points,
    member_profile,
    member_realtime,
    member_rfm,
)
