"""Typed request/response bodies of the decision service (OpenAPI at ``/``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from kernel.constants import MEMBER_ID_MAX_LENGTH, MEMBER_ID_PATTERN

Channel = Literal["app", "web", "store", "push", "sms", "email"]
_MEMBER_ID_RULES = {"min_length": 1, "max_length": MEMBER_ID_MAX_LENGTH, "pattern": MEMBER_ID_PATTERN}
MemberId = Field(**_MEMBER_ID_RULES, description="member id")  # a member_id parameter
MemberIdItem = Annotated[str, Field(**_MEMBER_ID_RULES)]  # an element of a list of member ids
# free text that ends up in logs and the state store: printable ASCII only (no NUL, control
# characters or emoji), bounded; ids without spaces, names with inner spaces
ID_PATTERN = r"^[\x21-\x7E]+$"
NAME_PATTERN = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$"
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]  # item, offer, store, decision ids
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]  # categories, regions
MAX_TS = 4_102_444_800  # 2100-01-01: larger timestamps are input errors, not dates


def _json_number(v):
    """JSON types, not Python coercions: `false` or "5" for a number is a 422 (949.0 is an integer)."""
    if isinstance(v, bool | str | bytes):
        raise ValueError(f"expected a JSON number, got {type(v).__name__}")
    return v


def json_int(ge: int, le: int):
    """An integer in [ge, le]; the bounds sit before the JSON-type check so the OpenAPI schema shows them."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_json_number)]


UnixTime = json_int(0, MAX_TS)
Amount = Annotated[float, Field(ge=0, le=1e9), BeforeValidator(_json_number)]
Timestamp = Field(None, description="decision time, unix seconds (default: now)")


class TraceStep(BaseModel):
    rule: str
    removed: list[str] | str
    sent_this_week: int | None = None
    cap: int | None = None
    # rule "models": the champion version of each model the answer used (null: its default policy)
    versions: dict[str, int | None] | None = None


class OfferDecision(BaseModel):
    offer_id: str
    score: float
    expected_incremental_value: float | None = Field(None, description="uplift x order value x margin - expected cost")
    p_redeem: float | None = None
    uplift: float | None = None
    order_value: float | None = Field(None, description="what a response is worth (learned from response revenue)")
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
    control: bool = Field(
        False, description="drawn into the control group: send nothing (the decision is logged to measure uplift)"
    )
    trace: list[TraceStep]
    notes: list[str] = []
    model_version: str | int | None = None


class Driver(BaseModel):
    feature: str
    value: float | int | str | bool | None
    contribution: float = Field(
        description="how much this feature raises the member's churn probability over the population's,"
        " in probability points (0.12 = 12 points)"
    )


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
    category: str | None = Field(None, description="the category the benefit applies to; null: every category")
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
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(
        min_length=1, max_length=128, pattern=ID_PATTERN, description="client-generated id; resending is idempotent"
    )
    member_id: str = MemberId
    event: Literal["impression", "click", "redemption", "purchase", "opt_out"]
    ts: UnixTime = Field(description="unix seconds")
    offer_id: Id | None = None
    item_id: Id | None = None
    channel: Channel | None = None
    decision_id: Id | None = None
    revenue: Amount | None = None


class FeedbackAck(BaseModel):
    stored: int
    duplicates: int = Field(description="event ids stored before with the same content: nothing to do")
    conflicts: int = Field(0, description="event ids stored before with other content: refused, not pushed")
    conflicting_event_ids: list[str] = []
    pushed_to_feature_store: bool
