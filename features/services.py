"""Feature services: the named, versioned feature sets that models train and serve on."""

from feast import FeatureService

from features.on_demand import request_recency
from features.views import (
    member_affinity,
    member_consent,
    member_engagement,
    member_points,
    member_profile,
    member_realtime,
    member_rfm,
)

churn_v1 = FeatureService(
    name="churn_v1",
    features=[
        member_rfm,
        member_profile[["tier_level", "months_at_tier"]],
        member_engagement,
        member_points[["points_balance", "points_expiring_30d", "points_earned_90d", "points_burned_90d"]],
        member_affinity[["category_entropy", "categories_365d", "top_category_1_share"]],
    ],
    description="Churn risk model inputs (as of the cutoff).",
)

offer_v1 = FeatureService(
    name="offer_v1",
    features=[
        member_rfm,
        member_profile[["tier_level", "months_at_tier"]],
        member_engagement,
        member_affinity,
        member_points[["points_balance", "points_expiring_30d"]],
    ],
    description="Offer propensity / uplift model inputs.",
)

member_online_v1 = FeatureService(
    name="member_online_v1",
    features=[
        member_rfm,
        member_profile,
        member_affinity,
        member_points,
        member_engagement,
        member_consent,
        member_realtime,
        request_recency,
    ],
    description="Everything the decision service reads for one member at request time.",
)
