"""Decision logic as plain functions: scoring, arbitration, reasons, budget allocation.

The BentoML service (``serving/service.py``) and the ``score-batch`` CLI both call these,
so an online answer and a campaign list are decided by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.uplift import PairEncoder, PropensityModel, pair_features

DEFAULT_AOV = 20.0  # order value when no member in the request has one yet
VALUE_DIMENSION_BY_TIER = {  # which benefit dimensions members of a tier respond to first (programme playbook)
    "Regular": ("material", "development"),
    "Silver": ("material", "emotional"),
    "Gold": ("emotional", "social"),
    "Platinum": ("social", "emotional"),
}


# --------------------------------------------------------------------------- eligibility
ELIGIBILITY_RULES = ("tier", "validity", "stock", "already_redeemed")  # in the order they are checked


@dataclass(frozen=True)
class OfferRules:
    """The catalogue's eligibility attributes as arrays, prepared once (the request path only compares)."""

    offer_ids: np.ndarray
    allowed_tiers: tuple[frozenset[str], ...]
    valid_from_ns: np.ndarray
    valid_to_ns: np.ndarray

    @classmethod
    def from_offers(cls, offers: pd.DataFrame) -> OfferRules:
        def ns(col: str, missing: int) -> np.ndarray:
            times = pd.to_datetime(offers[col])
            times = times.dt.tz_convert(None) if times.dt.tz is not None else times  # UTC, as "now" is
            values = times.to_numpy("datetime64[ns]")
            return np.where(np.isnat(values), missing, values.astype(np.int64))

        info = np.iinfo(np.int64)
        return cls(
            offer_ids=offers["offer_id"].to_numpy(dtype=object),
            allowed_tiers=tuple(frozenset(str(t).split("|")) for t in offers["eligible_tiers"]),
            valid_from_ns=ns("valid_from", info.min),  # no start date: valid from the beginning
            valid_to_ns=ns("valid_to", info.max),  # no end date: valid for good
        )

    def removed_by(self, tier: str | None, now: pd.Timestamp, stock_left: np.ndarray, redeemed: set[str]) -> list:
        """Per offer, the first rule that removes it, or None where it is eligible."""
        now = pd.Timestamp(now)
        now_ns = (now.tz_convert(None) if now.tzinfo else now).value
        member_tier = tier or "Regular"  # unknown members get what every member gets
        out = []
        for i, offer in enumerate(self.offer_ids):
            if member_tier not in self.allowed_tiers[i]:
                out.append("tier")
            elif self.valid_from_ns[i] > now_ns or self.valid_to_ns[i] < now_ns:
                out.append("validity")
            elif stock_left[i] <= 0:
                out.append("stock")
            elif offer in redeemed:
                out.append("already_redeemed")
            else:
                out.append(None)
        return out


def eligibility(
    offers: pd.DataFrame, tier: str | None, now: pd.Timestamp, stock_left: pd.Series, redeemed: set[str]
) -> pd.DataFrame:
    """One row per offer: ``eligible`` and, where not, the first rule that removed it."""
    rules = OfferRules.from_offers(offers)
    stock = stock_left.reindex(offers["offer_id"]).fillna(0).to_numpy()
    removed = rules.removed_by(tier, now, stock, redeemed)
    out = pd.DataFrame({"offer_id": rules.offer_ids, "removed_by": removed}, index=offers.index)
    out["eligible"] = out["removed_by"].isna()
    return out


def trace(elig: pd.DataFrame) -> list[dict]:
    """Decision trace: which rule removed which offers."""
    return trace_removed(elig["offer_id"].to_numpy(), elig["removed_by"].tolist())


def trace_removed(offer_ids, removed_by: list) -> list[dict]:
    """:func:`trace` on arrays: one step per rule that removed something, rules in name order."""
    steps: dict[str, list[str]] = {}
    for offer, rule in zip(offer_ids, removed_by, strict=True):
        if rule is not None:
            steps.setdefault(rule, []).append(offer)
    return [{"rule": rule, "removed": sorted(steps[rule])} for rule in sorted(steps)]


# --------------------------------------------------------------------------- scoring
def score_offers(model, member: pd.DataFrame, offers: pd.DataFrame, margin_rate: float) -> pd.DataFrame:
    """Expected incremental value of each offer for one or more members (rows of online features).

    value = uplift x order value x (margin rate + the offer's margin impact) - P(redeem) x cost,
    the order value being what a response to the offer is worth as the model learned it from
    the responses' revenue (the member's 365-day average order where it learned none).
    A propensity-only model (no control group in its training data) ranks by
    P(redeem) x order value x margin instead and says so in ``basis``.
    """
    pairs = pair_features(member, offers)
    pred = model.predict(pairs)
    aov = pd.to_numeric(pairs.get("aov_365d"), errors="coerce").fillna(0).to_numpy()
    aov = np.where(aov > 0, aov, np.nanmedian(np.where(aov > 0, aov, np.nan)) if (aov > 0).any() else DEFAULT_AOV)
    values = _offer_values(model, {c: pred[c].to_numpy() for c in pred.columns}, aov, pairs, margin_rate)
    return pd.DataFrame(
        {
            "member_id": pairs["member_id"].to_numpy(),
            "offer_id": pairs["offer_id"].to_numpy(),
            **values,
            "offer_category_share": pairs["offer_category_share"].to_numpy(),
        }
    )


def score_member(model, encoder: PairEncoder, member: dict, margin_rate: float) -> dict[str, np.ndarray]:
    """:func:`score_offers` for one member and every offer of ``encoder``'s catalogue, on arrays:
    one encoded matrix, one predict per booster (the service's hot path). Same values."""
    columns = encoder.columns(member)
    pred = model.predict_matrix(encoder.features.encode(columns, encoder.n_offers))
    aov = _number(member.get("aov_365d"))
    aov = np.full(encoder.n_offers, aov if aov > 0 else DEFAULT_AOV)
    offers = encoder.offer_columns
    return {
        "offer_id": offers["offer_id"],
        **_offer_values(model, pred, aov, offers, margin_rate),
        "offer_category_share": columns["offer_category_share"],
    }


def score_pairs(model, encoder: PairEncoder, members: pd.DataFrame, margin_rate: float) -> pd.DataFrame:
    """:func:`score_offers` for many members on arrays (batch scoring): one encoded matrix of
    every member x offer, one predict per booster. Same rows, same values."""
    n, k = len(members), encoder.n_offers
    pred = model.predict_matrix(encoder.encode_many(members))
    aov = pd.to_numeric(members.get("aov_365d"), errors="coerce").fillna(0).to_numpy()
    aov = np.where(aov > 0, aov, np.nanmedian(np.where(aov > 0, aov, np.nan)) if (aov > 0).any() else DEFAULT_AOV)
    offers = {c: np.tile(np.asarray(v), n) for c, v in encoder.offer_columns.items()}
    return pd.DataFrame(
        {
            "member_id": np.repeat(members["member_id"].to_numpy(), k),
            "offer_id": offers["offer_id"],
            **_offer_values(model, pred, np.repeat(aov, k), offers, margin_rate),
            "offer_category_share": encoder.category_match(members)[0].ravel(),
        }
    )


def _number(value) -> float:
    """A scalar as float, 0 when missing or not a number (as ``pd.to_numeric(errors="coerce")``)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if np.isnan(out) else out


def _offer_values(model, pred: dict, aov: np.ndarray, offers, margin_rate: float) -> dict:
    margin = margin_rate + np.nan_to_num(np.asarray(offers["margin_impact"], dtype=float))
    cost = np.nan_to_num(np.asarray(offers["cost"], dtype=float))
    p_redeem = pred["p_redeem"]
    uplift = pred["uplift"]
    # what a response is worth: learned from the responses' revenue where the model has it; the
    # member's average order only where it has not (a response is often a smaller order)
    learned = pred.get("order_value")
    order_value = aov if learned is None else np.where(np.isfinite(learned), learned, aov)
    if isinstance(model, PropensityModel) or np.isnan(uplift).all():
        incremental, basis = p_redeem * order_value * margin, "propensity"
    else:
        incremental, basis = uplift * order_value * margin, "uplift"
    return {
        "p_redeem": p_redeem,
        "p_convert_treated": pred.get("p_convert_treated", p_redeem),
        "uplift": uplift,
        "order_value": order_value,
        "expected_cost": p_redeem * cost,
        "expected_incremental_value": incremental - p_redeem * cost,
        "basis": np.full(len(p_redeem), basis, dtype=object),
    }


def reason_codes(row, member: dict) -> list[str]:
    """``row``: one scored offer (a mapping: basis, uplift, offer_category_share)."""
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
    order, propensity, explored = choose_order(len(ranked), max_results, exploration_rate, rng)
    return ranked.iloc[order], propensity, explored


def choose_order(
    n: int, max_results: int, exploration_rate: float, rng: np.random.Generator
) -> tuple[list[int], float | None, bool]:
    """:func:`choose` on positions 0..n-1 of a ranking: the positions shown, in order."""
    if n == 0:
        return [], None, False
    explore = exploration_rate > 0 and rng.random() < exploration_rate
    first = int(rng.integers(n)) if explore else 0
    order = [first] + [i for i in range(n) if i != first]
    propensity = exploration_rate / n + (1 - exploration_rate if first == 0 else 0.0)
    return order[:max_results], float(propensity), explore


# --------------------------------------------------------------------------- benefits
BENEFIT_COLUMNS = ("offer_id", "kind", "scene_dimension", "value_dimension", "category_l1", "cost", "stock")


@dataclass(frozen=True)
class BenefitCatalogue:
    """The benefit attributes as arrays, prepared once; :meth:`rank` runs per request."""

    columns: dict[str, np.ndarray]
    cost_penalty: np.ndarray
    cost_median: float

    @classmethod
    def from_offers(cls, offers: pd.DataFrame) -> BenefitCatalogue:
        cost = offers["cost"].to_numpy(dtype=float)
        return cls(
            columns={c: offers[c].to_numpy() for c in BENEFIT_COLUMNS},
            cost_penalty=cost / max(float(cost.max()) if len(cost) else 0.0, 1e-9),
            cost_median=float(np.median(cost)) if len(cost) else 0.0,
        )

    def rank(self, member: dict, cf_category_affinity: dict[str, float], removed_by: list) -> list[dict]:
        """Benefits ranked by CF category affinity, own spend share, dimension fit and cost, best first,
        each with its eligibility and reasons."""
        cats = {member.get(f"top_category_{k}"): member.get(f"top_category_{k}_share") or 0.0 for k in (1, 2, 3)}
        preferred = VALUE_DIMENSION_BY_TIER.get(member.get("tier") or "Regular", ("material",))
        category, dimension = self.columns["category_l1"], self.columns["value_dimension"]
        cf = np.array([cf_category_affinity.get(c, 0.0) for c in category], dtype=float)
        share = np.array([cats.get(c, 0.0) for c in category], dtype=float)
        fit = np.array([1.0 if d == preferred[0] else 0.5 if d in preferred else 0.0 for d in dimension])
        score = 0.4 * cf + 0.3 * share + 0.2 * fit - 0.1 * self.cost_penalty
        rows = []
        for i in np.argsort(-score, kind="stable"):
            row = {c: values[i] for c, values in self.columns.items()}
            reasons = [
                code
                for code, on in (
                    ("recommended_category", cf[i] >= 0.2),
                    ("shops_this_category", share[i] >= 0.2),
                    (f"prefers_{dimension[i]}_benefits", fit[i] == 1.0),
                    ("low_cost", row["cost"] <= self.cost_median),
                )
                if on
            ]
            row.update(
                cf_affinity=cf[i],
                spend_share=share[i],
                dimension_fit=fit[i],
                score=score[i],
                eligible=removed_by[i] is None,
                removed_by=removed_by[i],
                reasons=reasons,
            )
            rows.append(row)
        return rows


def rank_benefits(
    offers: pd.DataFrame, member: dict, cf_category_affinity: dict[str, float], elig: pd.DataFrame
) -> pd.DataFrame:
    """:meth:`BenefitCatalogue.rank` as a frame (``elig`` from :func:`eligibility`)."""
    removed = elig.set_index("offer_id")["removed_by"].reindex(offers["offer_id"])
    removed_by = [None if pd.isna(r) else r for r in removed]
    return pd.DataFrame(BenefitCatalogue.from_offers(offers).rank(member, cf_category_affinity, removed_by))


def shortlist(ranked: list[dict], max_results: int) -> tuple[list[dict], list[str]]:
    """The eligible benefits worth showing: a benefit that scores below zero (costly, off the
    member's categories and dimensions) and has no reason to show it is left out, and named."""
    eligible = [r for r in ranked if r["eligible"]]
    unjustified = [r["offer_id"] for r in eligible if r["score"] <= 0 and not r["reasons"]]
    shown = [r for r in eligible if r["score"] > 0 or r["reasons"]]
    return shown[:max_results], sorted(unjustified)


def benefit_shortlist(ranked: pd.DataFrame, max_results: int) -> tuple[pd.DataFrame, list[str]]:
    """:func:`shortlist` on a frame from :func:`rank_benefits`."""
    shown, unjustified = shortlist(ranked.to_dict("records"), max_results)
    return pd.DataFrame(shown, columns=ranked.columns), unjustified


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
