"""Typed request/response bodies of the decision service (OpenAPI at ``/``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Channel = Literal["app", "web", "store", "push", "sms", "email"]
MemberId = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.:]+$", description="member id")


class TraceStep(BaseModel):
    rule: str
    removed: list[str] | str
    sent_this_week: int | None = None
    cap: int | None = None


class OfferDecision(BaseModel):
    offer_id: str
    score: float
    expected_incremental_value: float | None = Field(None, description="uplift x order value x margin - expected cost")
    p_redeem: float | None = None
    uplift: float | None = None
    reason_codes: list[str]


class NextBestOfferResponse(BaseModel):
    decision_id: str
    member_id: str
    channel: str
    personalised: bool
    degraded: bool = Field(description="feature store or model unavailable: non-personalised default")
    cold_start: bool
    offers: list[OfferDecision]
    propensity: float | None = Field(None, description="probability this policy shows the first offer (for OPE)")
    explored: bool = False
    trace: list[TraceStep]
    notes: list[str] = []
    model_version: str | int | None = None


class Driver(BaseModel):
    feature: str
    value: float | int | str | bool | None
    contribution: float


class ChurnRiskResponse(BaseModel):
    member_id: str
    churn_probability: float | None
    risk_band: Literal["low", "medium", "high", "critical", "unknown"]
    top_drivers: list[Driver]
    health_quadrant: str | None
    suggested_action: str
    degraded: bool
    cold_start: bool
    model_version: str | int | None = None


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    category: str | None


class RecommendationsResponse(BaseModel):
    member_id: str
    items: list[RecommendedItem]
    source: str | None
    cold_start: bool
    degraded: bool
    model_version: str | int | None = None


class Benefit(BaseModel):
    offer_id: str
    kind: str
    scene_dimension: str
    value_dimension: str
    category: str
    cost: float
    score: float
    reasons: list[str]


class BenefitsResponse(BaseModel):
    member_id: str
    personalised: bool
    degraded: bool
    cold_start: bool
    benefits: list[Benefit]
    trace: list[TraceStep]


class FeedbackEvent(BaseModel):
    event_id: str = Field(min_length=1, max_length=128, description="client-generated id; resending is idempotent")
    member_id: str = MemberId
    event: Literal["impression", "click", "redemption", "purchase", "opt_out"]
    ts: int = Field(ge=0, description="unix seconds")
    offer_id: str | None = None
    item_id: str | None = None
    channel: Channel | None = None
    decision_id: str | None = None
    revenue: float | None = Field(None, ge=0)


class FeedbackAck(BaseModel):
    stored: int
    duplicates: int
    pushed_to_feature_store: bool
