"""Decision logic as plain functions: scoring, arbitration, reasons, budget allocation.

The BentoML service (``serving/service.py``) and the ``score-batch`` CLI both call these,
so an online answer and a campaign list are decided by the same code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.uplift import PropensityModel, pair_features

VALUE_DIMENSION_BY_TIER = {  # which benefit dimensions members of a tier respond to first (programme playbook)
    "Regular": ("material", "development"),
    "Silver": ("material", "emotional"),
    "Gold": ("emotional", "social"),
    "Platinum": ("social", "emotional"),
}


# --------------------------------------------------------------------------- eligibility
def eligibility(
    offers: pd.DataFrame, tier: str | None, now: pd.Timestamp, stock_left: pd.Series, redeemed: set[str]
) -> pd.DataFrame:
    """One row per offer: ``eligible`` and, where not, the first rule that removed it."""
    out = pd.DataFrame({"offer_id": offers["offer_id"].to_numpy()}, index=offers.index)
    tiers = offers["eligible_tiers"].astype(str).str.split("|")
    rules = [
        ("tier", ~tiers.map(lambda allowed: tier in allowed if tier else "Regular" in allowed)),
        ("validity", (offers["valid_from"] > now) | (offers["valid_to"] < now)),
        ("stock", stock_left.reindex(offers["offer_id"]).fillna(0).to_numpy() <= 0),
        ("already_redeemed", offers["offer_id"].isin(redeemed)),
    ]
    out["removed_by"] = None
    for name, hit in rules:
        mask = np.asarray(hit, dtype=bool) & out["removed_by"].isna().to_numpy()
        out.loc[mask, "removed_by"] = name
    out["eligible"] = out["removed_by"].isna()
    return out


def trace(elig: pd.DataFrame) -> list[dict]:
    """Decision trace: which rule removed which offers."""
    removed = elig[~elig["eligible"]].groupby("removed_by")["offer_id"].agg(list)
    return [{"rule": rule, "removed": sorted(ids)} for rule, ids in removed.items()]


# --------------------------------------------------------------------------- scoring
def score_offers(model, member: pd.DataFrame, offers: pd.DataFrame, margin_rate: float) -> pd.DataFrame:
    """Expected incremental value of each offer for one or more members (rows of online features).

    value = uplift x order value x (margin rate + the offer's margin impact) - P(redeem) x cost.
    A propensity-only model (no control group in its training data) ranks by
    P(redeem) x margin instead and says so in ``basis``.
    """
    pairs = pair_features(member, offers)
    pred = model.predict(pairs)
    aov = pd.to_numeric(pairs.get("aov_365d"), errors="coerce").fillna(0).to_numpy()
    aov = np.where(aov > 0, aov, np.nanmedian(np.where(aov > 0, aov, np.nan)) if (aov > 0).any() else 20.0)
    margin = margin_rate + pairs["margin_impact"].fillna(0).to_numpy()
    cost = pairs["cost"].fillna(0).to_numpy()
    p_redeem = pred["p_redeem"].to_numpy()
    if isinstance(model, PropensityModel) or pred["uplift"].isna().all():
        incremental = p_redeem * aov * margin
        basis = "propensity"
    else:
        incremental = pred["uplift"].to_numpy() * aov * margin
        basis = "uplift"
    return pd.DataFrame(
        {
            "member_id": pairs["member_id"].to_numpy(),
            "offer_id": pairs["offer_id"].to_numpy(),
            "p_redeem": p_redeem,
            "p_convert_treated": pred["p_convert_treated"].to_numpy() if "p_convert_treated" in pred else p_redeem,
            "uplift": pred["uplift"].to_numpy(),
            "expected_cost": p_redeem * cost,
            "expected_incremental_value": incremental - p_redeem * cost,
            "offer_category_share": pairs["offer_category_share"].to_numpy(),
            "basis": basis,
        }
    )


def reason_codes(row: pd.Series, member: dict) -> list[str]:
    codes = []
    if row.get("basis") == "uplift" and row["uplift"] > 0:
        codes.append("positive_uplift")
    if row.get("basis") == "propensity":
        codes.append("propensity_ranking_no_uplift_model")
    if row.get("offer_category_share", 0) >= 0.2:
        codes.append("category_affinity")
    if (member.get("points_expiring_30d") or 0) > 0:
        codes.append("points_expiring_soon")
    if member.get("lifecycle_stage") == "decline":
        codes.append("win_back")
    return codes


def choose(
    ranked: pd.DataFrame, max_results: int, exploration_rate: float, rng: np.random.Generator
) -> tuple[pd.DataFrame, float | None, bool]:
    """Top offers; with probability ``exploration_rate`` a uniformly random one leads instead.

    Returns (offers, propensity of the first offer under this policy, explored?).
    """
    n = len(ranked)
    if n == 0:
        return ranked, None, False
    explore = exploration_rate > 0 and rng.random() < exploration_rate
    first = int(rng.integers(n)) if explore else 0
    order = [first] + [i for i in range(n) if i != first]
    chosen = ranked.iloc[order[:max_results]]
    propensity = exploration_rate / n + (1 - exploration_rate if first == 0 else 0.0)
    return chosen, float(propensity), explore


# --------------------------------------------------------------------------- benefits
def rank_benefits(
    offers: pd.DataFrame, member: dict, cf_category_affinity: dict[str, float], elig: pd.DataFrame
) -> pd.DataFrame:
    """Benefits ranked by CF category affinity, own spend share, dimension fit and cost."""
    cats = {member.get(f"top_category_{k}"): member.get(f"top_category_{k}_share") or 0.0 for k in (1, 2, 3)}
    preferred = VALUE_DIMENSION_BY_TIER.get(member.get("tier") or "Regular", ("material",))
    out = offers[["offer_id", "kind", "scene_dimension", "value_dimension", "category_l1", "cost", "stock"]].copy()
    out["cf_affinity"] = out["category_l1"].map(cf_category_affinity).fillna(0.0)
    out["spend_share"] = out["category_l1"].map(cats).fillna(0.0)
    out["dimension_fit"] = out["value_dimension"].map(
        lambda d: 1.0 if d == preferred[0] else 0.5 if d in preferred else 0.0
    )
    cost_penalty = out["cost"] / max(float(out["cost"].max()), 1e-9)
    out["score"] = 0.4 * out["cf_affinity"] + 0.3 * out["spend_share"] + 0.2 * out["dimension_fit"] - 0.1 * cost_penalty
    out = out.merge(elig[["offer_id", "eligible", "removed_by"]], on="offer_id")
    out["reasons"] = [
        [
            code
            for code, on in (
                ("recommended_category", r.cf_affinity >= 0.2),
                ("shops_this_category", r.spend_share >= 0.2),
                (f"prefers_{r.value_dimension}_benefits", r.dimension_fit == 1.0),
                ("low_cost", r.cost <= out["cost"].median()),
            )
            if on
        ]
        for r in out.itertuples()
    ]
    return out.sort_values("score", ascending=False, kind="stable")


def benefit_shortlist(ranked: pd.DataFrame, max_results: int) -> tuple[pd.DataFrame, list[str]]:
    """The eligible benefits worth showing: a benefit that scores below zero (costly, off the
    member's categories and dimensions) and has no reason to show it is left out, and named."""
    eligible = ranked[ranked["eligible"]]
    unjustified = (eligible["score"] <= 0) & ~eligible["reasons"].map(bool)
    return eligible[~unjustified].head(max_results), sorted(eligible.loc[unjustified, "offer_id"])


# --------------------------------------------------------------------------- budget
def allocate(scored: pd.DataFrame, budget: float, stock: dict[str, int]) -> tuple[pd.DataFrame, dict]:
    """At most one offer per member, maximising expected incremental value under a total
    expected-cost budget and per-offer stock (greedy by value per unit of cost; pairs with
    non-positive value are never sent)."""
    cand = scored[scored["expected_incremental_value"] > 0].copy()
    cand["ratio"] = cand["expected_incremental_value"] / cand["expected_cost"].clip(lower=1e-6)
    cand = cand.sort_values(["ratio", "expected_incremental_value"], ascending=False, kind="stable")
    left = dict(stock)
    spent, members, rows = 0.0, set(), []
    for r in cand.itertuples():
        if r.member_id in members or left.get(r.offer_id, 0) <= 0 or spent + r.expected_cost > budget:
            continue
        rows.append(r.Index)
        members.add(r.member_id)
        left[r.offer_id] -= 1
        spent += r.expected_cost
    chosen = cand.loc[rows].drop(columns="ratio")
    summary = {
        "members_scored": int(scored["member_id"].nunique()),
        "members_targeted": len(chosen),
        "budget": float(budget),
        "expected_cost": float(spent),
        "expected_incremental_value": float(chosen["expected_incremental_value"].sum()),
    }
    return chosen.reset_index(drop=True), summary
