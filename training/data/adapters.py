"""Adapters for public retail data that a mapping file cannot express (see ``ADAPTERS``).

Rows an adapter cannot map (cancellations, missing customer ids, non-positive
quantities, products never priced) are returned as *rejected* with a reason, so the
ingest step quarantines and counts them like contract failures.

Neither data set records consent, engagement or a points programme. The adapters say
so in the output instead of inventing it: consent is marked as assumed for offline
evaluation, engagement is empty, and the points ledger is derived with the programme's
own rule (1 point per currency unit, 12-month expiry, no burns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.importer import empty_table, members_from_transactions
from training.data.points import derive_points_ledger

DEFAULT_MARGIN_RATE = 0.3  # neither data set has margins; one documented assumption


class SharedDataMissing(FileNotFoundError):
    """The public data folder (or one of its files) is not there."""


@dataclass
class AdapterOutput:
    tables: dict[str, pd.DataFrame]
    rejected: dict[str, pd.DataFrame] = field(default_factory=dict)  # rows + "_reason"
    end: pd.Timestamp | None = None
    notes: list[str] = field(default_factory=list)

    def rejected_counts(self) -> dict[str, dict[str, int]]:
        return {t: df["_reason"].value_counts().to_dict() for t, df in self.rejected.items()}


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise SharedDataMissing(f"{path} not found: put the public data under ../shared/data (see its README)")
    return pd.read_parquet(path)


def _reject(df: pd.DataFrame, mask: pd.Series, reason: str) -> pd.DataFrame:
    return df.loc[mask].assign(_reason=reason)


def load_complete_journey(shared_dir: Path) -> AdapterOutput:
    """dunnhumby Complete Journey -> members, items, transactions, offers, exposures, responses."""
    base = Path(shared_dir) / "complete_journey"
    campaigns = _read(base / "campaigns.parquet")
    descriptions = _read(base / "campaign_descriptions.parquet")
    coupons = _read(base / "coupons.parquet")
    redemptions = _read(base / "coupon_redemptions.parquet")
    demographics = _read(base / "demographics.parquet")
    products = _read(base / "products.parquet")
    tx = _read(base / "transactions_sample.parquet").reset_index(drop=True)
    tx = tx.assign(_source_row=tx.index)

    bad_qty = tx["quantity"] <= 0
    bad_value = ~bad_qty & (tx["sales_value"] < 0)
    rejected_tx = pd.concat(
        [_reject(tx, bad_qty, "non-positive quantity"), _reject(tx, bad_value, "negative sales_value")]
    )
    ok = tx.loc[~tx.index.isin(rejected_tx.index)]
    txn = pd.DataFrame(
        {
            "order_id": ok["basket_id"].astype(str),
            "member_id": ok["household_id"].astype(str),
            "item_id": ok["product_id"].astype(str),
            "quantity": ok["quantity"].round().clip(lower=1).astype("int64"),
            "amount": ok["sales_value"].round(2),
            "ts": ok["transaction_timestamp"],
            "channel": "store",
            "store_id": ok["store_id"].astype(str),
        }
    ).reset_index(drop=True)
    end = txn["ts"].max().normalize() + pd.Timedelta(days=1)

    desc = descriptions.assign(
        start=pd.to_datetime(descriptions["start_date"]), stop=pd.to_datetime(descriptions["end_date"])
    ).set_index("campaign_id")
    # Households seen anywhere; join date = first sighting (no enrolment dates in the data).
    seen = pd.concat(
        [
            txn[["member_id", "ts"]],
            campaigns.assign(
                member_id=campaigns["household_id"].astype(str), ts=campaigns["campaign_id"].map(desc["start"])
            )[["member_id", "ts"]],
            demographics.assign(member_id=demographics["household_id"].astype(str), ts=pd.NaT)[["member_id", "ts"]],
        ]
    )
    first_seen = seen.groupby("member_id")["ts"].min().fillna(desc["start"].min())
    members = members_from_transactions(txn, end, consent_assumed=True).set_index("member_id").reindex(first_seen.index)
    members["join_date"] = first_seen
    members["consent_updated_at"] = first_seen
    members["region"] = "unknown"
    members["tier"] = members["tier"].fillna("Regular")
    for col in ("consent_personalisation", "consent_push", "consent_sms", "consent_email"):
        members[col] = members[col].astype("boolean").fillna(True).astype(bool)
    members = members.reset_index(names="member_id")

    price = (ok["sales_value"] / ok["quantity"]).groupby(ok["product_id"].astype(str)).median()
    prod = products.assign(product_id=products["product_id"].astype(str)).set_index("product_id")
    prod["price"] = price.reindex(prod.index)
    unpriced = prod["price"].isna() | (prod["price"] <= 0)
    items = pd.DataFrame(
        {
            "item_id": prod.index[~unpriced],
            "category_l1": prod.loc[~unpriced, "department"].fillna("UNKNOWN").to_numpy(),
            "category_l2": prod.loc[~unpriced, "product_category"].fillna("UNKNOWN").to_numpy(),
            "price": prod.loc[~unpriced, "price"].to_numpy(),
            "margin_rate": DEFAULT_MARGIN_RATE,
        }
    )
    rejected_items = prod.loc[unpriced].reset_index().assign(_reason="no priced sale in the transactions sample")

    # One offer per campaign: its coupons promote the campaign's most common department.
    dept = coupons.merge(products[["product_id", "department"]], on="product_id", how="left")
    top_dept = dept.groupby("campaign_id")["department"].agg(
        lambda s: s.dropna().mode().iat[0] if s.notna().any() else None
    )
    n_coupons = coupons.groupby("campaign_id")["coupon_upc"].nunique()
    offers = pd.DataFrame(
        {
            "offer_id": desc.index.astype(str),
            "kind": "coupon",
            "scene_dimension": "need",
            "value_dimension": "material",
            "category_l1": top_dept.reindex(desc.index).to_numpy(),
            "cost": 0.0,  # coupon face values are not in the data
            "margin_impact": 0.0,
            "eligible_tiers": "Regular|Silver|Gold|Platinum",
            "stock": campaigns.groupby("campaign_id").size().reindex(desc.index).fillna(0).astype(int).to_numpy(),
            "valid_from": desc["start"].to_numpy(),
            "valid_to": desc["stop"].to_numpy(),
        }
    )
    offers["kind"] = np.where(n_coupons.reindex(desc.index).fillna(0).to_numpy() > 0, "coupon", "discount")

    exposures = pd.DataFrame(
        {
            "exposure_id": campaigns["campaign_id"].astype(str) + "_" + campaigns["household_id"].astype(str),
            "campaign_id": campaigns["campaign_id"].astype(str),
            "member_id": campaigns["household_id"].astype(str),
            "offer_id": campaigns["campaign_id"].astype(str),
            "ts": campaigns["campaign_id"].map(desc["start"]),
            "channel": "mail",
            "treatment": True,  # every household in the table was targeted: no control group
            "propensity": np.nan,  # targeting policy not logged
        }
    )
    red = redemptions.assign(redemption_date=pd.to_datetime(redemptions["redemption_date"]))
    red_first = red.groupby(["campaign_id", "household_id"])["redemption_date"].min()
    key = pd.MultiIndex.from_arrays([campaigns["campaign_id"], campaigns["household_id"]])
    resp_ts = red_first.reindex(key).to_numpy()
    redeemed = ~pd.isna(resp_ts)
    responses = pd.DataFrame(
        {
            "exposure_id": exposures["exposure_id"],
            "member_id": exposures["member_id"],
            "offer_id": exposures["offer_id"],
            "redeemed": redeemed,
            "converted": redeemed,
            "response_ts": resp_ts,
            "revenue": 0.0,  # redemptions are not linked to basket values in the samples
        }
    )
    ledger = derive_points_ledger(txn, None, end).drop(columns="fraud")
    return AdapterOutput(
        tables={
            "members": members,
            "items": items,
            "transactions": txn,
            "offers": offers,
            "exposures": exposures,
            "responses": responses,
            "points_ledger": ledger,
            "engagement": empty_table("engagement"),
        },
        rejected={"transactions": rejected_tx, "items": rejected_items},
        end=end,
        notes=[
            "campaigns have no control group: propensity only, no uplift",
            "transactions and promotions are samples; revenue of redemptions unknown",
            "coupon face value unknown: offer cost 0",
            "no consent records: consent assumed for offline evaluation",
        ],
    )


# Complete Journey stays code: a mapping renames and converts one table's columns, and this
# data set needs joins a mapping cannot express (offers from campaigns x coupons x products,
# exposures from campaign membership, responses from first redemptions per household).
# UCI Online Retail loads through training/data/mappings/online_retail.yaml.
ADAPTERS = {"complete_journey": load_complete_journey}
