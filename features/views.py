"""Feature views over the member snapshot tables, built for one :class:`~features.repo_spec.RepoSpec`."""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field
from feast.data_source import DataSource
from feast.types import Bool, Float64, Int64, String

from features.entities import member
from features.repo_spec import RepoSpec
from features.sources import member_events_push, snapshot_source

NO_TTL_VIEWS = ("member_consent", "member_realtime")  # latest value ever recorded is current


NO_TTL = timedelta(0)  # never expires


def _view(ttl: timedelta, name: str, source: DataSource, fields: list[Field], description: str = "") -> FeatureView:
    return FeatureView(
        name=name, entities=[member], ttl=ttl, schema=fields, source=source, online=True, description=description
    )


def feature_views(spec: RepoSpec) -> dict[str, FeatureView]:
    """Every materialised view, by name. A snapshot is valid until the next one plus slack;
    older values are treated as missing."""
    ttl = timedelta(days=2 * spec.snapshot_every_days)
    member_rfm = _view(
        ttl,
        "member_rfm",
        snapshot_source(spec, "member_rfm"),
        [
            Field(name="recency_days", dtype=Float64),
            Field(name="last_purchase_ts", dtype=Int64),
            *[Field(name=f"frequency_{w}d", dtype=Int64) for w in (30, 90, 365)],
            *[Field(name=f"monetary_{w}d", dtype=Float64) for w in (30, 90, 365)],
            Field(name="monetary_prev_90d", dtype=Float64),
            Field(name="aov_365d", dtype=Float64),
            Field(name="orders_total", dtype=Int64),
            Field(name="tenure_days", dtype=Float64),
        ],
        description="Recency, frequency and monetary value over 30/90/365 days; average order value.",
    )

    member_profile = _view(
        ttl,
        "member_profile",
        snapshot_source(spec, "member_profile"),
        [
            Field(name="tier", dtype=String),
            Field(name="tier_level", dtype=Int64),
            Field(name="months_at_tier", dtype=Float64),
            Field(name="lifecycle_stage", dtype=String),
            Field(name="health_quadrant", dtype=String),
            Field(name="region", dtype=String),
            Field(name="city_tier", dtype=Int64),
        ],
        description="Tier and months at tier, lifecycle stage, health quadrant (90-day buying x 30-day interaction).",
    )

    member_affinity = _view(
        ttl,
        "member_affinity",
        snapshot_source(spec, "member_affinity"),
        [
            *[
                f
                for k in (1, 2, 3)
                for f in (
                    Field(name=f"top_category_{k}", dtype=String),
                    Field(name=f"top_category_{k}_share", dtype=Float64),
                )
            ],
            Field(name="category_entropy", dtype=Float64),
            Field(name="categories_365d", dtype=Int64),
        ],
        description="Category affinity: top-3 level-1 categories by 365-day spend share and spend entropy.",
    )

    member_points = _view(
        ttl,
        "member_points",
        snapshot_source(spec, "member_points"),
        [
            Field(name="points_balance", dtype=Int64),
            Field(name="points_frozen", dtype=Int64),
            Field(name="points_expiring_30d", dtype=Int64),
            Field(name="points_earned_90d", dtype=Int64),
            Field(name="points_burned_90d", dtype=Int64),
            Field(name="points_adjust_90d", dtype=Int64),
        ],
        description="Points balance, frozen points, points expiring within 30 days (FIFO), 90-day flows.",
    )

    member_engagement = _view(
        ttl,
        "member_engagement",
        snapshot_source(spec, "member_engagement"),
        [
            Field(name="sends_90d", dtype=Int64),
            Field(name="open_rate_90d", dtype=Float64),
            Field(name="click_rate_90d", dtype=Float64),
            Field(name="interactions_30d", dtype=Int64),
            Field(name="best_send_hour", dtype=Int64),
        ],
        description="Push/SMS/e-mail engagement rates and the member's best send hour (-1 = unknown).",
    )

    member_btyd = _view(
        ttl,
        "member_btyd",
        snapshot_source(spec, "member_btyd"),
        [
            Field(name="btyd_p_alive", dtype=Float64),
            Field(name="btyd_p_no_purchase_90d", dtype=Float64),
            Field(name="btyd_expected_purchases_90d", dtype=Float64),
            Field(name="btyd_spend_per_purchase", dtype=Float64),
            Field(name="btyd_expected_spend_90d", dtype=Float64),
            Field(name="btyd_mean_gap_days", dtype=Float64),
            Field(name="btyd_recency_over_gap", dtype=Float64),
        ],
        description="Buy-till-you-die: BG/NBD P(alive), P(no purchase) and expected purchases in 90 days, "
        "Gamma-Gamma spend per purchase and expected 90-day spend; fitted on the history before each "
        "snapshot; the member's mean days between purchase days and the current gap in those units; "
        "-1 = no purchase yet (or no repeat purchase, for the rhythm).",
    )

    member_consent = _view(
        NO_TTL,  # consent never expires; the latest record wins
        "member_consent",
        snapshot_source(spec, "member_consent"),
        [
            Field(name="consent_personalisation", dtype=Bool),
            Field(name="consent_push", dtype=Bool),
            Field(name="consent_sms", dtype=Bool),
            Field(name="consent_email", dtype=Bool),
        ],
        description="Consent for personalisation and each contact channel.",
    )

    member_realtime = _view(
        NO_TTL,
        "member_realtime",
        member_events_push(spec),
        [
            Field(name="rt_last_event_type", dtype=String),
            Field(name="rt_last_event_ts", dtype=Int64),
            Field(name="rt_last_purchase_ts", dtype=Int64),
        ],
        description="Latest real-time member event, written through the push source.",
    )
    views = (member_rfm, member_profile, member_affinity, member_points, member_engagement, member_btyd)
    views += (member_consent, member_realtime)
    return {v.name: v for v in views}
