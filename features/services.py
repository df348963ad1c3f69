"""Feature services: the named, versioned feature sets that models train and serve on."""

from __future__ import annotations

from feast import FeatureService, FeatureView
from feast.on_demand_feature_view import OnDemandFeatureView

from kernel.constants import ONLINE_FEATURE_SERVICE


def feature_services(views: dict[str, FeatureView], recency: OnDemandFeatureView) -> dict[str, FeatureService]:
    v = views
    churn_v1 = FeatureService(
        name="churn_v1",
        features=[
            v["member_rfm"],
            v["member_profile"][["tier_level", "months_at_tier"]],
            v["member_engagement"],
            v["member_points"][["points_balance", "points_expiring_30d", "points_earned_90d", "points_burned_90d"]],
            v["member_affinity"][["category_entropy", "categories_365d", "top_category_1_share"]],
            v["member_btyd"],
        ],
        description="Churn risk and value model inputs (as of the cutoff), buy-till-you-die scores included.",
    )
    offer_v1 = FeatureService(
        name="offer_v1",
        features=[
            v["member_rfm"],
            v["member_profile"][["tier_level", "months_at_tier"]],
            v["member_engagement"],
            v["member_affinity"],
            v["member_points"][["points_balance", "points_expiring_30d"]],
        ],
        description="Offer propensity / uplift model inputs.",
    )
    member_online_v1 = FeatureService(
        name=ONLINE_FEATURE_SERVICE,
        features=[*views.values(), recency],
        description="Everything the decision service reads for one member at request time.",
    )
    return {s.name: s for s in (churn_v1, offer_v1, member_online_v1)}
