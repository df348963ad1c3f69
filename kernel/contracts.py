"""Data contracts for every raw table the service consumes.

Each contract is a pandera ``DataFrameModel``. :func:`validate` splits a frame into
valid rows and quarantined rows (with the reason), so bad rows are counted and kept,
never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from kernel.constants import CONTACT_CHANNELS

TIERS = ["Regular", "Silver", "Gold", "Platinum"]
TXN_CHANNELS = ["store", "online", "app", "campaign"]
OFFER_KINDS = ["coupon", "discount", "points_multiplier", "gift", "service"]
SCENE_DIMENSIONS = ["time", "space", "social", "need"]
VALUE_DIMENSIONS = ["material", "emotional", "social", "development"]
ENGAGEMENT_EVENTS = ["send", "open", "click"]
LEDGER_KINDS = ["earn", "burn", "expire", "adjust", "freeze"]
# natural keys: a row whose key an earlier batch holds is a duplicate (same content: skipped) or a
# conflict (other content: quarantined, the first kept); None: the whole row is its key
NATURAL_KEYS = {
    "members": ["member_id"],
    "items": ["item_id"],
    "offers": ["offer_id"],
    "transactions": ["order_id", "item_id", "line_no"],
    "exposures": ["exposure_id"],
    "responses": ["exposure_id"],
    "engagement": None,
    "points_ledger": ["entry_id"],
}


class _Base(pa.DataFrameModel):
    class Config:
        coerce = True
        strict = "filter"  # extra columns are dropped from the curated table, not an error


class Members(_Base):
    member_id: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    join_date: Series[pd.Timestamp]
    birthday_month: Series[pd.Int64Dtype] = pa.Field(ge=1, le=12, nullable=True)
    region: Series[str]
    city_tier: Series[pd.Int64Dtype] = pa.Field(ge=1, le=5, nullable=True)
    tier: Series[str] = pa.Field(isin=TIERS)
    consent_personalisation: Series[bool]
    consent_push: Series[bool]
    consent_sms: Series[bool]
    consent_email: Series[bool]
    consent_updated_at: Series[pd.Timestamp]


class Items(_Base):
    item_id: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    category_l1: Series[str]
    category_l2: Series[str]
    price: Series[float] = pa.Field(gt=0)
    margin_rate: Series[float] = pa.Field(ge=-1, le=1)


class Transactions(_Base):
    order_id: Series[str]
    member_id: Series[str] = pa.Field(str_length={"min_value": 1})
    item_id: Series[str] = pa.Field(str_length={"min_value": 1})
    quantity: Series[int] = pa.Field(gt=0)
    amount: Series[float] = pa.Field(ge=0)
    ts: Series[pd.Timestamp]
    channel: Series[str] = pa.Field(isin=TXN_CHANNELS)
    store_id: Series[str] = pa.Field(nullable=True)


class Offers(_Base):
    offer_id: Series[str] = pa.Field(unique=True)
    kind: Series[str] = pa.Field(isin=OFFER_KINDS)
    scene_dimension: Series[str] = pa.Field(isin=SCENE_DIMENSIONS)
    value_dimension: Series[str] = pa.Field(isin=VALUE_DIMENSIONS)
    category_l1: Series[str] = pa.Field(nullable=True)  # category the offer promotes
    cost: Series[float] = pa.Field(ge=0)  # cost to the programme per redemption
    margin_impact: Series[float] = pa.Field(ge=-1, le=1)
    eligible_tiers: Series[str]  # "|"-separated subset of TIERS
    stock: Series[int] = pa.Field(ge=0)
    valid_from: Series[pd.Timestamp]
    valid_to: Series[pd.Timestamp]

    @pa.dataframe_check(element_wise=False)
    def valid_window(cls, df: pd.DataFrame) -> Series[bool]:
        return df["valid_to"] >= df["valid_from"]

    @pa.check("eligible_tiers", name="tiers_known")
    def tiers_known(cls, s: Series[str]) -> Series[bool]:
        return s.str.split("|").map(lambda parts: len(parts) > 0 and set(parts) <= set(TIERS))


class Exposures(_Base):
    exposure_id: Series[str] = pa.Field(unique=True)
    campaign_id: Series[str]
    member_id: Series[str] = pa.Field(str_length={"min_value": 1})
    offer_id: Series[str]
    ts: Series[pd.Timestamp]
    # outbound contacts, print mail, and the service's own placements (in-app, web, till)
    channel: Series[str] = pa.Field(isin=[*CONTACT_CHANNELS, "mail", "store", "app", "web"])
    treatment: Series[bool]
    propensity: Series[float] = pa.Field(gt=0, le=1, nullable=True)  # null: not logged


class Responses(_Base):
    exposure_id: Series[str] = pa.Field(unique=True)
    member_id: Series[str]
    offer_id: Series[str]
    redeemed: Series[bool]
    converted: Series[bool]  # bought in the promoted category inside the response window
    response_ts: Series[pd.Timestamp] = pa.Field(nullable=True)
    revenue: Series[float] = pa.Field(ge=0)

    @pa.dataframe_check
    def redeemed_implies_converted(cls, df: pd.DataFrame) -> Series[bool]:
        return ~df["redeemed"] | df["converted"]


class Engagement(_Base):
    member_id: Series[str] = pa.Field(str_length={"min_value": 1})
    ts: Series[pd.Timestamp]
    channel: Series[str] = pa.Field(isin=list(CONTACT_CHANNELS))
    event: Series[str] = pa.Field(isin=ENGAGEMENT_EVENTS)
    hour: Series[int] = pa.Field(ge=0, le=23)


class PointsLedger(_Base):
    entry_id: Series[str] = pa.Field(unique=True)
    member_id: Series[str] = pa.Field(str_length={"min_value": 1})
    ts: Series[pd.Timestamp]
    kind: Series[str] = pa.Field(isin=LEDGER_KINDS)
    points: Series[int]
    balance: Series[int] = pa.Field(ge=0)
    expires_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    order_id: Series[str] = pa.Field(nullable=True)

    @pa.dataframe_check
    def sign_matches_kind(cls, df: pd.DataFrame) -> Series[bool]:
        positive = df["kind"].eq("earn")
        negative = df["kind"].isin(["burn", "expire", "freeze"])
        return (~positive | (df["points"] > 0)) & (~negative | (df["points"] < 0))


CONTRACTS: dict[str, type[pa.DataFrameModel]] = {
    "members": Members,
    "items": Items,
    "transactions": Transactions,
    "offers": Offers,
    "exposures": Exposures,
    "responses": Responses,
    "engagement": Engagement,
    "points_ledger": PointsLedger,
}


class ContractError(ValueError):
    """A table cannot be validated at all (missing column, wrong table)."""


@dataclass
class ValidationResult:
    table: str
    valid: pd.DataFrame
    quarantined: pd.DataFrame  # original columns + _source_row + _reason
    source_index: list[int] | None = None  # the input row of each valid row

    @property
    def counts(self) -> dict[str, int]:
        return {"valid": len(self.valid), "quarantined": len(self.quarantined)}


def _times_row_by_row(df: pd.DataFrame, contract, columns: set[str]) -> dict[str, pd.Series]:
    """Text timestamp ``columns`` that failed as a whole, parsed value by value: an export may mix
    "2024-05-01 10:00" and "2024-05-01T10:00:00" in one column, and the contract's coercion infers
    one format from the first value and fails the whole column on the others. Values that still do
    not parse stay as they came, so the next pass quarantines their rows with the text itself.
    Only after a failure: a column in one format keeps the contract's fast path."""
    out = {}
    schema = contract.to_schema().columns
    for name in sorted(columns):
        if name not in schema or "datetime" not in str(schema[name].dtype) or df[name].dtype != object:
            continue
        try:
            parsed = pd.to_datetime(df[name], errors="coerce", format="mixed")
        except (ValueError, TypeError):  # e.g. offsets mixed with naive times: the contract's error stands
            continue
        out[name] = df[name].where(parsed.isna(), parsed.astype(object))
    return out


def validate(table: str, df: pd.DataFrame, max_passes: int = 5) -> ValidationResult:
    """Validate ``df`` against the contract for ``table``.

    Failing rows are moved to ``quarantined`` with every reason found; the others are
    coerced to the contract's dtypes and returned in ``valid``. Raises
    :class:`ContractError` naming the field when a whole column is missing.
    """
    if table not in CONTRACTS:
        raise ContractError(f"unknown table {table!r}; expected one of {sorted(CONTRACTS)}")
    contract = CONTRACTS[table]
    missing = [c for c in contract.to_schema().columns if c not in df.columns]
    if missing:
        raise ContractError(f"{table}: missing required column(s) {missing}")

    work = df.reset_index(drop=True)
    original = work
    reparsed: set[str] = set()
    reasons: dict[int, list[str]] = {}
    for _ in range(max_passes):
        try:
            valid = contract.validate(work, lazy=True)
            break
        except pa.errors.SchemaErrors as err:
            cases = err.failure_cases
            row_cases = cases[cases["index"].notna()]
            if row_cases.empty:
                retry = _times_row_by_row(work, contract, set(cases["column"].dropna()) - reparsed)
                if retry:
                    reparsed |= retry.keys()
                    work = work.assign(**retry)
                    continue
                detail = "; ".join(f"{r.column}: {r.check}" for r in cases.itertuples())
                raise ContractError(f"{table}: {detail}") from err
            for case in row_cases.itertuples():
                reasons.setdefault(int(case.index), []).append(
                    f"{case.column}: {case.check} (got {case.failure_case!r})"
                )
            # Column-level failures without a row index (e.g. a comparison that raised
            # on an uncoercible value) are re-checked on the remaining rows.
            work = work.drop(index=[i for i in reasons if i in work.index])
    else:  # pragma: no cover - defensive; each pass removes a row or re-parses a column once
        raise ContractError(f"{table}: validation did not converge")

    bad_index = sorted(reasons)
    quarantined = original.loc[bad_index].astype("string")
    quarantined.insert(0, "_source_row", pd.Series(bad_index, index=bad_index, dtype="int64"))
    # typed even when empty: no quarantined rows still reads as text columns downstream
    quarantined["_reason"] = pd.Series(
        ["; ".join(dict.fromkeys(reasons[i])) for i in bad_index], index=bad_index, dtype="string"
    )
    source_index = [int(i) for i in valid.index]
    return ValidationResult(table, valid.reset_index(drop=True), quarantined.reset_index(drop=True), source_index)
