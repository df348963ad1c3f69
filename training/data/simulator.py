"""Seeded loyalty-programme simulator that keeps its ground truth.

Members have latent item preferences (low-rank factors), a purchase rate with weekly
and December seasonality, an engagement propensity and a churn hazard that rises with
recency and falls with engagement. Randomised campaigns (treatment/control) act through
heterogeneous per-member x offer treatment effects. The points ledger is derived from
the transactions, with a small share of injected points-farming fraud.

Raw tables go to ``<out>/raw`` (the same shape an adapter produces) and the ground truth
to ``<out>/ground_truth``: true preference ranking, true churn probability over the label
window, true uplift for every member x offer, the expected conversion, revenue and cost of
every campaign exposure, true best send hour and fraud flags.

Offers have an economics mix: each is built to be worth expanding, keeping or adjusting under
the programme's ROI rule, for a stated reason (``ground_truth/offer_effects``: ``economics``).

Members are simulated in fixed-size chunks, each with its own RNG stream spawned from
the seed, so output is deterministic for (n_members, seed) and memory stays bounded
from 1k to 1M members.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from kernel.contracts import TIERS
from training.data.points import derive_points_ledger
from training.data.tiers import tier_from_spend, tier_names

SURE_THING_SHARE = 0.9  # share of a member's activity lift on the logit that an offer cannot add to
# Conversion orders are one line: quantity 1 + Poisson(0.3), a 15% chance of a U(0.05, 0.3) discount.
CONVERSION_ORDER_FACTOR = 1.3 * (1 - 0.15 * 0.175)
# The economics each offer is built for, by offer index: the programme's ROI rule should expand
# the first kind, keep the second and adjust the last two: one is priced for an ROI below 10 (on a
# tier-restricted audience of active members it often loses money), the other hurts conversion.
# Widely eligible offers (index % 4 in {0, 3}) carry the expand/keep cases, so campaigns reach
# enough members to measure their ROI precisely; tier-restricted offers reach few members.
OFFER_ECONOMICS = (
    "expand",
    "adjust: priced too high",
    "adjust: hurts conversion",
    "keep",
    "adjust: priced too high",
    "adjust: priced too high",
    "adjust: hurts conversion",
    "expand",
    "keep",
    "adjust: priced too high",
    "adjust: hurts conversion",
    "adjust: hurts conversion",
)
# Per kind: the range of the offer's base effect on the conversion logit, and the ROI its cost is
# priced for on a pilot population (None: the cost is drawn, the offer loses money anyway).
ECONOMICS_DESIGN = {
    "expand": ((1.1, 1.5), 60.0),
    "keep": ((1.1, 1.5), 17.0),
    "adjust: priced too high": ((0.3, 0.7), 3.0),
    "adjust: hurts conversion": ((-1.2, -0.8), None),
}
PILOT_MEMBERS = 4_000
CHUNK = 20_000  # members per RNG stream; part of the determinism contract
REGIONS = ["north", "south", "east", "west", "central", "coast"]
CATEGORIES = ["grocery", "beauty", "apparel", "home", "electronics", "baby", "pets", "sports", "books", "wine"]


@dataclass(frozen=True)
class SimConfig:
    n_members: int = 10_000
    seed: int = 7
    start: str = "2024-01-01"
    days: int = 540
    label_window_days: int = 90  # churn label: no purchase in the last N days
    n_factors: int = 8
    items_per_subcategory: int = 10
    fraud_share: float = 0.005
    campaign_offsets: tuple[int, ...] = (-360, -300, -240, -180, -120, -60)  # days before the cutoff
    campaign_reach: float = 0.5
    control_share: float = 0.3
    response_window_days: int = 14
    personalisation_opt_in: float = 0.88
    channel_opt_in: dict = field(default_factory=lambda: {"push": 0.7, "sms": 0.5, "email": 0.75})

    @property
    def start_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.start)

    @property
    def end_ts(self) -> pd.Timestamp:
        return self.start_ts + pd.Timedelta(days=self.days)

    @property
    def cutoff_day(self) -> int:
        return self.days - self.label_window_days


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _season(day_index: np.ndarray | int, start: pd.Timestamp) -> np.ndarray:
    """Weekly rhythm plus a December peak."""
    d = start + pd.to_timedelta(np.atleast_1d(day_index), unit="D")
    weekly = 1.0 + 0.25 * np.isin(d.dayofweek, [5, 6])
    december = 1.0 + 0.6 * np.exp(-(((d.dayofyear - 350) / 12.0) ** 2))
    return np.asarray(weekly * december, dtype=float)


# --------------------------------------------------------------------------- catalogue
def make_catalogue(cfg: SimConfig) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1_000_003]))
    rows = []
    for c, cat in enumerate(CATEGORIES):
        for s in range(2):
            for _j in range(cfg.items_per_subcategory):
                price = float(np.round(np.exp(rng.normal(2.3 + 0.25 * (c % 4), 0.5)), 2))
                rows.append(
                    {
                        "item_id": f"I{len(rows):04d}",
                        "category_l1": cat,
                        "category_l2": f"{cat}-{s}",
                        "price": max(price, 0.5),
                        "margin_rate": float(np.round(rng.uniform(0.1, 0.45), 3)),
                    }
                )
    items = pd.DataFrame(rows)
    n_items = len(items)
    cat_idx = items["category_l1"].map({c: i for i, c in enumerate(CATEGORIES)}).to_numpy()
    # Item factors share a category component so preferences cluster by category.
    cat_factors = rng.normal(0, 1.0, (len(CATEGORIES), cfg.n_factors))
    item_factors = cat_factors[cat_idx] + rng.normal(0, 0.5, (n_items, cfg.n_factors))
    item_bias = rng.normal(0, 0.6, n_items)
    category_coef = {
        c: float(v) for c, v in zip(CATEGORIES, rng.choice([1.0, 1.0, 1.5, 2.0], len(CATEGORIES)), strict=False)
    }

    kinds = [
        "coupon",
        "discount",
        "points_multiplier",
        "gift",
        "service",
        "coupon",
        "discount",
        "points_multiplier",
        "gift",
        "coupon",
        "service",
        "discount",
    ]
    scenes = ["time", "space", "social", "need"]
    values = ["material", "emotional", "social", "development"]
    tier_sets = [
        "Regular|Silver|Gold|Platinum",
        "Silver|Gold|Platinum",
        "Gold|Platinum",
        "Regular|Silver|Gold|Platinum",
    ]
    offers = []
    for o, kind in enumerate(kinds):
        offers.append(
            {
                "offer_id": f"O{o:02d}",
                "kind": kind,
                "scene_dimension": scenes[o % 4],
                "value_dimension": values[(o // 3) % 4],
                "category_l1": CATEGORIES[o % len(CATEGORIES)],
                "cost": float(np.round(rng.uniform(1.0, 12.0), 2)),  # repriced below for its economics
                "margin_impact": float(np.round(-rng.uniform(0.0, 0.15), 3)),
                "eligible_tiers": tier_sets[o % 4],
                "stock": int(max(50, cfg.n_members * rng.uniform(0.02, 0.15))),
                "valid_from": cfg.start_ts,
                "valid_to": cfg.end_ts + pd.Timedelta(days=180),
            }
        )
    offers = pd.DataFrame(offers)
    # Treatment-effect structure per offer (on the logit of conversion):
    # tau = base + price_slope * (price_sensitivity - 0.5) + pref_slope * centred log preference
    #       - SURE_THING_SHARE * activity: active members (frequent, engaged) would mostly buy
    #       anyway, so an offer mostly subsidises them ("sure things") although their response
    #       propensity is the highest; propensity and uplift rankings therefore differ.
    economics = [OFFER_ECONOMICS[o % len(OFFER_ECONOMICS)] for o in range(len(offers))]
    effect = pd.DataFrame(
        {
            "offer_id": offers["offer_id"],
            "economics": economics,
            "base": [rng.uniform(*ECONOMICS_DESIGN[e][0]) for e in economics],
            "price_slope": rng.normal(2.0, 1.0, len(offers)),
            "pref_slope": rng.normal(0.0, 0.5, len(offers)),
            "redeem_rate": rng.uniform(0.55, 0.9, len(offers)),
        }
    )
    cat = {
        "items": items,
        "item_factors": item_factors,
        "item_bias": item_bias,
        "item_category": cat_idx,
        "category_coef": category_coef,
        "offers": offers,
        "effect": effect,
    }
    offers["cost"] = _priced_costs(cfg, cat)
    return cat


def _category_order_value(lat: _Latent, cat: dict) -> np.ndarray:
    """Members x categories: the expected value of a conversion order in each category."""
    price = cat["items"]["price"].to_numpy()
    out = np.zeros((len(lat.ids), len(CATEGORIES)))
    for c in range(len(CATEGORIES)):
        in_c = cat["item_category"] == c
        p = lat.item_prob[:, in_c]
        out[:, c] = (p @ price[in_c]) / p.sum(axis=1)
    return out * CONVERSION_ORDER_FACTOR


def _category_preference(lat: _Latent, cat: dict) -> np.ndarray:
    """Members x categories: the share of a member's purchase choices in each category."""
    return np.stack([lat.item_prob[:, cat["item_category"] == c].sum(axis=1) for c in range(len(CATEGORIES))], 1)


def _priced_costs(cfg: SimConfig, cat: dict) -> np.ndarray:
    """Cost per redemption that gives each offer the ROI its economics asks for on a pilot population
    (an own RNG stream, so the members of the world are untouched)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1_000_004]))
    lat = _make_latent(cfg, cat, rng, 0, PILOT_MEMBERS)
    cat_pref, value = _category_preference(lat, cat), _category_order_value(lat, cat)
    offers, effect = cat["offers"], cat["effect"]
    offer_cat = offers["category_l1"].map({c: i for i, c in enumerate(CATEGORIES)}).to_numpy()
    costs = offers["cost"].to_numpy(float).copy()
    for o, kind in enumerate(effect["economics"]):
        target = ECONOMICS_DESIGN[kind][1]
        if target is None:
            continue
        rows, oidx = np.arange(len(lat.ids)), np.full(len(lat.ids), o)
        p0, p1 = _conversion_probs(lat, cat_pref, effect, offer_cat, rows, oidx)
        incremental = ((p1 - p0) * value[rows, offer_cat[o]]).mean()
        redemptions = (p1 * effect["redeem_rate"].iloc[o]).mean()
        costs[o] = max(0.05, round(float(incremental / ((target + 1.0) * redemptions)), 2))
    return costs


# --------------------------------------------------------------------------- members
@dataclass
class _Latent:
    ids: np.ndarray
    join_day: np.ndarray
    item_prob: np.ndarray  # members x items, true purchase-choice probabilities
    rate: np.ndarray  # purchase occasions per day before seasonality
    engagement: np.ndarray
    best_hour: np.ndarray
    price_sens: np.ndarray
    hazard0: np.ndarray
    basket_value: np.ndarray
    channel_pref: np.ndarray  # members x 3 (store, online, app)


def _hazard(latent: _Latent, recency: np.ndarray) -> np.ndarray:
    """Daily churn hazard: higher with recency, lower with engagement."""
    return latent.hazard0 * np.exp(2.0 * (0.4 - latent.engagement)) * (1.0 + np.minimum(recency, 180) / 45.0)


def _make_latent(cfg: SimConfig, cat: dict, rng: np.random.Generator, first: int, n: int) -> _Latent:
    u = rng.normal(0, 1.0, (n, cfg.n_factors)) * rng.uniform(0.3, 1.0, (n, 1))
    scores = u @ cat["item_factors"].T / np.sqrt(cfg.n_factors) * 2.0 + cat["item_bias"]
    scores -= scores.max(axis=1, keepdims=True)
    prob = np.exp(scores)
    prob /= prob.sum(axis=1, keepdims=True)
    price = cat["items"]["price"].to_numpy()
    return _Latent(
        ids=np.array([f"M{i:07d}" for i in range(first, first + n)], dtype=object),
        join_day=rng.integers(-720, cfg.days - 60, n),
        item_prob=prob,
        rate=rng.gamma(2.0, 0.03, n),
        engagement=rng.beta(2.0, 3.0, n),
        best_hour=rng.choice(np.arange(24), n, p=_hour_weights()),
        price_sens=rng.beta(2.0, 2.0, n),
        hazard0=np.exp(rng.normal(np.log(1 / 1500), 0.7, n)),
        basket_value=(prob * price).sum(axis=1),
        channel_pref=rng.dirichlet([3.0, 1.5, 1.5], n),
    )


def _hour_weights() -> np.ndarray:
    w = np.array([0.2] * 7 + [1, 2, 2, 1.5, 2.5, 3, 1.5, 1.2, 1.2, 1.5, 2, 3, 3.5, 3, 2, 1, 0.5])
    return w / w.sum()


# --------------------------------------------------------------------------- chunk
def _sample_items(
    rng: np.random.Generator, prob: np.ndarray, member_rows: np.ndarray, batch: int = 40_000
) -> np.ndarray:
    """Draw one item per row from each row's member preference distribution."""
    out = np.empty(len(member_rows), dtype=np.int64)
    for lo in range(0, len(member_rows), batch):
        rows = member_rows[lo : lo + batch]
        cdf = np.cumsum(prob[rows], axis=1)
        u = rng.random(len(rows))[:, None] * cdf[:, -1:]
        out[lo : lo + batch] = np.minimum((cdf < u).sum(axis=1), prob.shape[1] - 1)
    return out


def _simulate_chunk(cfg: SimConfig, cat: dict, chunk_no: int, first: int, n: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, chunk_no]))
    lat = _make_latent(cfg, cat, rng, first, n)
    start = cfg.start_ts
    items = cat["items"]
    cat_of_item = cat["item_category"]
    cat_pref = _category_preference(lat, cat)
    order_value = _category_order_value(lat, cat)

    # Consent snapshot.
    consent = {
        "consent_personalisation": rng.random(n) < cfg.personalisation_opt_in,
        **{f"consent_{ch}": rng.random(n) < p for ch, p in cfg.channel_opt_in.items()},
    }

    alive = np.ones(n, dtype=bool)
    recency = np.zeros(n)  # days since last purchase (or since joining)
    spend_by_day = np.zeros((n, cfg.days), dtype=np.float32)  # expected spend, for tier at campaign time
    order_member: list[np.ndarray] = []
    order_day: list[np.ndarray] = []
    alive_at_cutoff = recency_at_cutoff = None
    campaign_days = {cfg.cutoff_day + off: k for k, off in enumerate(cfg.campaign_offsets)}
    offers, effect = cat["offers"], cat["effect"]
    offer_cat = offers["category_l1"].map({c: i for i, c in enumerate(CATEGORIES)}).to_numpy()
    exposures: list[pd.DataFrame] = []
    conv_orders: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # member row, day, category
    season = _season(np.arange(cfg.days), start)

    for d in range(cfg.days):
        joined = lat.join_day <= d
        if d == cfg.cutoff_day:
            alive_at_cutoff = alive & joined
            recency_at_cutoff = recency.copy()
        active = alive & joined
        k = rng.poisson(lat.rate * season[d]) * active
        bought = k > 0
        if bought.any():
            rows = np.repeat(np.nonzero(bought)[0], k[bought])
            order_member.append(rows)
            order_day.append(np.full(len(rows), d))
            spend_by_day[bought, d] = k[bought] * lat.basket_value[bought] * 2.5
        if d in campaign_days:
            exp_df, conv = _run_campaign(
                cfg,
                rng,
                chunk_no,
                lat,
                cat_pref,
                consent,
                spend_by_day,
                recency,
                active,
                joined,
                d,
                campaign_days[d],
                offers,
                effect,
                offer_cat,
                order_value,
            )
            exposures.append(exp_df)
            if len(conv[0]):
                conv_orders.append(conv)
                bought[conv[0]] = True
        recency = np.where(bought, 0.0, recency + 1.0)
        dies = rng.random(n) < _hazard(lat, recency)
        alive &= ~(dies & joined)

    # ---- orders -> transaction lines
    om = np.concatenate(order_member) if order_member else np.empty(0, dtype=np.int64)
    od = np.concatenate(order_day) if order_day else np.empty(0, dtype=np.int64)
    txn = order_lines(rng, cfg, items, lat, om, od, f"C{chunk_no}R")

    # campaign conversions become orders in the promoted category
    conv_txn = []
    for m_rows, days, cats, conv_ids in conv_orders:
        conv_txn.append(conversion_lines(rng, cfg, items, cat_of_item, lat, m_rows, days, cats, conv_ids))
    exposures_df = pd.concat(exposures, ignore_index=True) if exposures else pd.DataFrame()
    if conv_txn:
        conv_df = pd.concat(conv_txn, ignore_index=True)
        txn = pd.concat([txn, conv_df], ignore_index=True)
        rev = conv_df.groupby("order_id")["amount"].sum()
        exposures_df["revenue"] = exposures_df["conv_order_id"].map(rev).fillna(0.0)
    elif len(exposures_df):
        exposures_df["revenue"] = 0.0

    # ---- members table (tier as of the end of the data)
    end_day = cfg.days
    spend_365 = txn.loc[txn["ts"] >= start + pd.Timedelta(days=end_day - 365)].groupby("member_id")["amount"].sum()
    last_ts = txn.groupby("member_id")["ts"].max()
    spend = spend_365.reindex(lat.ids).fillna(0.0).to_numpy()
    rec_end = ((cfg.end_ts - last_ts.reindex(lat.ids)).dt.days).fillna(9999).to_numpy()
    join_ts = start + pd.to_timedelta(lat.join_day, unit="D")
    members = pd.DataFrame(
        {
            "member_id": lat.ids,
            "join_date": join_ts,
            "birthday_month": rng.integers(1, 13, n),
            "region": rng.choice(REGIONS, n),
            # price-sensitive members live more often in lower-tier cities: an observable proxy
            # for the part of the treatment effect that price sensitivity drives
            "city_tier": np.clip(1 + np.floor(lat.price_sens * 5 + rng.normal(0, 0.6, n)), 1, 5).astype(np.int64),
            "tier": tier_names(tier_from_spend(spend, rec_end)),
            **consent,
            "consent_updated_at": join_ts.where(join_ts > start, start)
            + pd.to_timedelta(rng.integers(0, 30, n), unit="D"),
        }
    )

    engagement = _engagement(cfg, rng, lat, consent)
    ledger, fraud = _points_ledger(cfg, rng, cat, txn, lat)
    ledger["entry_id"] = f"C{chunk_no}" + ledger["entry_id"]
    fraud_entries = ledger.loc[ledger.pop("fraud"), ["entry_id", "member_id"]]

    # ---- ground truth
    truth_pref = _truth_preferences(lat)
    truth_churn = _truth_churn(cfg, lat, alive_at_cutoff, recency_at_cutoff, season)
    truth_uplift = _truth_uplift(lat, cat_pref, offers, effect, offer_cat, order_value)
    truth_members = pd.DataFrame(
        {
            "member_id": lat.ids,
            "purchase_rate": lat.rate,
            "engagement": lat.engagement,
            "best_hour": lat.best_hour,
            "price_sensitivity": lat.price_sens,
            "alive_at_cutoff": alive_at_cutoff,
            "alive_at_end": alive & (lat.join_day <= cfg.days),
        }
    )
    responses = (
        exposures_df[["exposure_id", "member_id", "offer_id", "redeemed", "converted", "response_ts", "revenue"]]
        if len(exposures_df)
        else exposures_df
    )
    truth_columns = [c for c in exposures_df.columns if c.startswith("true_")]
    truth_exposures = (
        exposures_df[["exposure_id", "offer_id", "campaign_id", "treatment", *truth_columns]].rename(
            columns=lambda c: c.removeprefix("true_")
        )
        if len(exposures_df)
        else exposures_df
    )
    exposures_out = exposures_df.drop(
        columns=["redeemed", "converted", "response_ts", "revenue", "conv_order_id", *truth_columns], errors="ignore"
    )
    return {
        "raw/members": members,
        "raw/transactions": txn,
        "raw/exposures": exposures_out,
        "raw/responses": responses,
        "raw/engagement": engagement,
        "raw/points_ledger": ledger,
        "ground_truth/preferences": truth_pref,
        "ground_truth/churn": truth_churn,
        "ground_truth/uplift": truth_uplift,
        "ground_truth/exposures": truth_exposures,
        "ground_truth/members": truth_members,
        "ground_truth/fraud": fraud,
        "ground_truth/fraud_entries": fraud_entries,
        # where the world stands at its end: what `data simulate --advance` continues from
        "ground_truth/state": world_state(lat.ids, alive & (lat.join_day <= cfg.days), recency, ledger),
    }


def world_state(ids: np.ndarray, alive: np.ndarray, recency: np.ndarray, ledger: pd.DataFrame) -> pd.DataFrame:
    """Per member: alive, days since the last purchase, points balance (the ledger's last row)."""
    balance = ledger.groupby("member_id")["balance"].last() if len(ledger) else pd.Series(dtype="int64")
    return pd.DataFrame(
        {
            "member_id": ids,
            "alive": np.asarray(alive, dtype=bool),
            "recency": np.asarray(recency, dtype=float),
            "points_balance": balance.reindex(ids).fillna(0).astype("int64").to_numpy(),
        }
    )


def read_truth(truth_dir: Path, name: str) -> pd.DataFrame:
    """A ground-truth table: the simulation's file plus the parts each ``--advance`` added."""
    parts = [truth_dir / f"{name}.parquet", *sorted((truth_dir / name).glob("*.parquet"))]
    frames = [pd.read_parquet(p) for p in parts if p.exists()]
    if not frames:
        raise FileNotFoundError(f"{truth_dir / name}.parquet missing: simulate the dataset first")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def order_lines(rng, cfg, items, lat, om: np.ndarray, od: np.ndarray, prefix: str) -> pd.DataFrame:
    """Regular orders (member row ``om`` on day ``od``) -> transaction lines: a channel from the
    member's channel mix, 1 + Poisson(1.5) lines from their preferences, ids ``prefix`` + number."""
    ch_names = np.array(["store", "online", "app"], dtype=object)
    u = rng.random(len(om))
    och = ch_names[(np.cumsum(lat.channel_pref[om], axis=1) < u[:, None]).sum(axis=1).clip(0, 2)]
    n_lines = 1 + rng.poisson(1.5, len(om))
    line_order = np.repeat(np.arange(len(om)), n_lines)
    line_item = _sample_items(rng, lat.item_prob, om[line_order])
    order_ids = np.char.add(prefix, np.arange(len(om)).astype(str)).astype(object)
    return _lines_frame(rng, cfg, items, lat, om, od, och, line_order, line_item, order_ids=order_ids)


def conversion_lines(rng, cfg, items, item_category, lat, rows, days, cats, order_ids) -> pd.DataFrame:
    """Offer conversions -> one-line orders on channel ``campaign``, the item drawn from the
    member's preferences within the promoted category ``cats``."""
    masked = lat.item_prob[rows] * (item_category[None, :] == cats[:, None])
    masked /= masked.sum(axis=1, keepdims=True)
    item = _sample_items(rng, masked, np.arange(len(rows)))
    channel = np.full(len(rows), "campaign", dtype=object)
    return _lines_frame(rng, cfg, items, lat, rows, days, channel, np.arange(len(rows)), item, order_ids=order_ids)


def _lines_frame(
    rng, cfg, items, lat, order_rows, order_days, order_channel, line_order, line_item, order_ids
) -> pd.DataFrame:
    qty = 1 + rng.poisson(0.3, len(line_item))
    price = items["price"].to_numpy()[line_item]
    discount = np.where(rng.random(len(line_item)) < 0.15, rng.uniform(0.05, 0.3, len(line_item)), 0.0)
    seconds = rng.integers(8 * 3600, 22 * 3600, len(order_rows))
    ts = cfg.start_ts + pd.to_timedelta(order_days, unit="D") + pd.to_timedelta(seconds, unit="s")
    member_rows = order_rows[line_order]
    channel = order_channel[line_order]
    store = np.where(channel == "store", np.char.add("S", (member_rows % 40).astype(str)).astype(object), None)
    return pd.DataFrame(
        {
            "order_id": order_ids[line_order],
            "member_id": lat.ids[member_rows],
            "item_id": items["item_id"].to_numpy()[line_item],
            "quantity": qty,
            "amount": np.round(price * qty * (1 - discount), 2),
            "ts": np.asarray(ts)[line_order],
            "channel": channel,
            "store_id": store,
        }
    )


def _run_campaign(
    cfg,
    rng,
    chunk_no,
    lat,
    cat_pref,
    consent,
    spend_by_day,
    recency,
    active,
    joined,
    d,
    k,
    offers,
    effect,
    offer_cat,
    order_value,
):
    """One randomised campaign: random reach, random eligible offer, treatment/control split.

    Each exposure also carries its truth: the expected conversion with and without the offer
    (zero for members who have churned), the expected order value and the expected cost."""
    n = len(lat.ids)
    reachable = joined & (consent["consent_push"] | consent["consent_sms"] | consent["consent_email"])
    chosen = reachable & (rng.random(n) < cfg.campaign_reach)
    spend_365 = spend_by_day[:, max(0, d - 365) : d + 1].sum(axis=1)
    tier_idx = tier_from_spend(spend_365, recency)
    eligible = np.array(
        [[TIERS[t] in set(offers["eligible_tiers"].iloc[o].split("|")) for o in range(len(offers))] for t in range(4)]
    )[tier_idx]
    rows = np.nonzero(chosen & eligible.any(axis=1))[0]
    n_elig = eligible[rows].sum(axis=1)
    pick = (rng.random(len(rows)) * n_elig).astype(int)
    offer_idx = np.array([np.nonzero(eligible[r])[0][p] for r, p in zip(rows, pick, strict=False)], dtype=np.int64)
    treated = rng.random(len(rows)) >= cfg.control_share
    arm_p = np.where(treated, 1 - cfg.control_share, cfg.control_share)
    channels = np.array(["push", "sms", "email"], dtype=object)
    ch_ok = np.stack(
        [consent["consent_push"][rows], consent["consent_sms"][rows], consent["consent_email"][rows]], axis=1
    )
    ch = channels[np.argmax(ch_ok * rng.random(ch_ok.shape), axis=1)]
    p0, p1 = _conversion_probs(lat, cat_pref, effect, offer_cat, rows, offer_idx)
    p0, p1 = p0 * active[rows], p1 * active[rows]  # dead members never convert
    converted = rng.random(len(rows)) < np.where(treated, p1, p0)
    redeem_rate = effect["redeem_rate"].to_numpy()[offer_idx]
    redeemed = converted & treated & (rng.random(len(rows)) < redeem_rate)
    delay = rng.integers(0, cfg.response_window_days, len(rows))
    ts = cfg.start_ts + pd.Timedelta(days=d) + pd.to_timedelta(rng.integers(9 * 3600, 20 * 3600, len(rows)), unit="s")
    resp_ts = pd.Series(ts + pd.to_timedelta(delay, unit="D")).where(converted)
    ids = np.char.add(f"E{k}_", lat.ids[rows].astype(str)).astype(object)
    conv_days = d + delay[converted]
    conv_prefix = f"C{chunk_no}K{k}_"
    exp_df = pd.DataFrame(
        {
            "exposure_id": ids,
            "campaign_id": f"CMP{k}",
            "member_id": lat.ids[rows],
            "offer_id": offers["offer_id"].to_numpy()[offer_idx],
            "ts": ts,
            "channel": ch,
            "treatment": treated,
            "propensity": cfg.campaign_reach / n_elig * arm_p,
            "redeemed": redeemed,
            "converted": converted,
            "response_ts": resp_ts.to_numpy(),
            "true_p_convert_control": p0,
            "true_p_convert_treated": p1,
            "true_order_value": order_value[rows, offer_cat[offer_idx]],
            "true_cost": np.where(treated, p1 * redeem_rate * offers["cost"].to_numpy()[offer_idx], 0.0),
        }
    )
    # order ids of conversions must match the ones _lines_frame assigns (prefix + running number)
    conv_order = np.full(len(rows), None, dtype=object)
    conv_order[converted] = [f"{conv_prefix}{i}" for i in range(converted.sum())]
    exp_df["conv_order_id"] = conv_order
    return exp_df, (rows[converted], conv_days, offer_cat[offer_idx[converted]], conv_order[converted])


def _conversion_probs(lat, cat_pref, effect, offer_cat, rows, offer_idx):
    """True conversion probability without (p0) and with (p1) the offer."""
    n_cat = cat_pref.shape[1]
    logpref = np.log(cat_pref[rows, offer_cat[offer_idx]] * n_cat + 1e-9)
    activity = 3.0 * (lat.engagement[rows] - 0.4) + 16.0 * (lat.rate[rows] - 0.06)
    base_logit = -2.8 + 0.6 * logpref + activity
    tau = (
        effect["base"].to_numpy()[offer_idx]
        + effect["price_slope"].to_numpy()[offer_idx] * (lat.price_sens[rows] - 0.5)
        + effect["pref_slope"].to_numpy()[offer_idx] * logpref
        - SURE_THING_SHARE * activity
    )
    return _sigmoid(base_logit), _sigmoid(base_logit + tau)


def _engagement(cfg, rng, lat, consent) -> pd.DataFrame:
    """Weekly sends per consented channel over the last 26 weeks; opens near the best hour."""
    frames = []
    weeks = 26
    first_day = cfg.days - weeks * 7
    for ch, ch_factor in (("push", 0.6), ("sms", 0.4), ("email", 0.8)):
        rows = np.nonzero(consent[f"consent_{ch}"])[0]
        if not len(rows):
            continue
        m = np.repeat(rows, weeks)
        week = np.tile(np.arange(weeks), len(rows))
        day = first_day + week * 7 + rng.integers(0, 7, len(m))
        keep = lat.join_day[m] <= day
        m, day = m[keep], day[keep]
        send_hour = rng.integers(9, 21, len(m))
        closeness = np.exp(
            -np.minimum(np.abs(send_hour - lat.best_hour[m]), 24 - np.abs(send_hour - lat.best_hour[m])) / 4.0
        )
        opened = rng.random(len(m)) < lat.engagement[m] * ch_factor * (0.4 + 0.6 * closeness)
        clicked = opened & (rng.random(len(m)) < 0.35)
        open_hour = np.where(rng.random(len(m)) < 0.7, lat.best_hour[m], send_hour)
        base = cfg.start_ts + pd.to_timedelta(day, unit="D")
        frames.append(
            pd.DataFrame(
                {
                    "member_id": lat.ids[m],
                    "ts": base + pd.to_timedelta(send_hour, unit="h"),
                    "channel": ch,
                    "event": "send",
                    "hour": send_hour,
                }
            )
        )
        for ev, mask, extra in (("open", opened, 0), ("click", clicked, 1)):
            h = (open_hour[mask] + extra) % 24
            frames.append(
                pd.DataFrame(
                    {
                        "member_id": lat.ids[m[mask]],
                        "ts": base[mask] + pd.to_timedelta(h, unit="h"),
                        "channel": ch,
                        "event": ev,
                        "hour": h,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def _points_ledger(cfg, rng, cat, txn, lat) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Earn/burn/expire from the transactions plus injected points-farming fraud."""
    n = len(lat.ids)
    fraudsters = np.nonzero(rng.random(n) < cfg.fraud_share)[0]
    extra = []
    # Points farming: a burst of manual top-ups with no order reference (as goodwill credits
    # have), so neither the entry kind nor a missing order id alone gives it away.
    for r in fraudsters:
        lo = max(30, int(lat.join_day[r]) + 1)
        day = int(rng.integers(lo, cfg.days - 5)) if lo < cfg.days - 6 else cfg.days - 5
        k = int(rng.integers(8, 25))
        ts = cfg.start_ts + pd.Timedelta(days=day) + pd.to_timedelta(np.sort(rng.integers(0, 36 * 3600, k)), unit="s")
        extra.append(
            pd.DataFrame(
                {
                    "member_id": lat.ids[r],
                    "order_id": None,
                    "ts": ts,
                    "points": rng.integers(150, 400, k),
                    "kind": "adjust",
                    "fraud": True,
                }
            )
        )
    # Goodwill adjustments for ordinary members, so "adjust" alone is not the fraud signal.
    # Some members get several (service recovery), so counts of adjustments overlap too.
    goodwill = np.nonzero(rng.random(n) < 0.02)[0]
    goodwill = np.repeat(goodwill, rng.integers(1, 4, len(goodwill)))
    if len(goodwill):
        days = np.maximum(lat.join_day[goodwill], 0) + rng.integers(1, 60, len(goodwill))
        extra.append(
            pd.DataFrame(
                {
                    "member_id": lat.ids[goodwill],
                    "order_id": None,
                    "ts": cfg.start_ts + pd.to_timedelta(np.minimum(days, cfg.days - 1), unit="D"),
                    "points": rng.integers(20, 200, len(goodwill)),
                    "kind": "adjust",
                    "fraud": False,
                }
            )
        )
    coef = cat["items"].set_index("item_id")["category_l1"].map(cat["category_coef"])
    ledger = derive_points_ledger(txn, coef, cfg.end_ts, rng=rng, extra_events=extra)
    fraud_members = pd.DataFrame({"member_id": lat.ids, "fraud": np.isin(np.arange(n), fraudsters)})
    return ledger, fraud_members


# --------------------------------------------------------------------------- ground truth
def _truth_preferences(lat: _Latent, top: int = 20) -> pd.DataFrame:
    idx = np.argsort(-lat.item_prob, axis=1)[:, :top]
    n = len(lat.ids)
    return pd.DataFrame(
        {
            "member_id": np.repeat(lat.ids, top),
            "item_index": idx.ravel(),
            "rank": np.tile(np.arange(1, top + 1), n),
            "prob": np.take_along_axis(lat.item_prob, idx, axis=1).ravel(),
        }
    )


def _truth_churn(
    cfg: SimConfig, lat: _Latent, alive0: np.ndarray, recency0: np.ndarray, season: np.ndarray
) -> pd.DataFrame:
    """Exact P(no purchase in the label window | true state at the cutoff).

    Along a no-purchase path recency is deterministic, so the probability is a product
    over days: a member either dies before buying or survives the window without buying.
    """
    stay = np.ones(len(lat.ids))  # alive and no purchase so far
    died = np.zeros(len(lat.ids))
    rec = recency0.astype(float).copy()
    for d in range(cfg.cutoff_day, cfg.days):
        no_buy = np.exp(-lat.rate * season[d])
        rec = rec + 1.0
        h = np.clip(_hazard(lat, rec), 0, 1)
        died += stay * no_buy * h
        stay = stay * no_buy * (1 - h)
    p = np.where(alive0, died + stay, 1.0)
    joined = lat.join_day < cfg.cutoff_day
    return pd.DataFrame({"member_id": lat.ids, "p_no_purchase": p, "joined_before_cutoff": joined})


def _truth_uplift(lat, cat_pref, offers, effect, offer_cat, order_value) -> pd.DataFrame:
    n, k = len(lat.ids), len(offers)
    rows = np.repeat(np.arange(n), k)
    oidx = np.tile(np.arange(k), n)
    p0, p1 = _conversion_probs(lat, cat_pref, effect, offer_cat, rows, oidx)
    value = order_value[rows, offer_cat[oidx]]
    redeem = effect["redeem_rate"].to_numpy()[oidx]
    cost = offers["cost"].to_numpy()[oidx]
    return pd.DataFrame(
        {
            "member_id": lat.ids[rows],
            "offer_id": offers["offer_id"].to_numpy()[oidx],
            "p_convert_control": p0,
            "p_convert_treated": p1,
            "uplift": p1 - p0,
            "incremental_revenue": (p1 - p0) * value,
            "expected_cost": p1 * redeem * cost,
        }
    )


# --------------------------------------------------------------------------- driver
def _chunk_tables(cfg: SimConfig, cat: dict, chunk_no: int, first: int, n: int) -> dict[str, pa.Table]:
    out = {}
    for name, df in _simulate_chunk(cfg, cat, chunk_no, first, n).items():
        if name == "ground_truth/preferences":
            df = df.assign(item_id=cat["items"]["item_id"].to_numpy()[df.pop("item_index").to_numpy()])
        out[name] = pa.Table.from_pandas(df, preserve_index=False)
    return out


def _chunks_in_order(cfg: SimConfig, cat: dict, workers: int) -> Iterator[dict[str, pa.Table]]:
    """Every chunk's tables in chunk order, computed ``workers`` at a time: each chunk has its
    own RNG stream, so the tables are the same whatever the number of workers. At most
    ``workers + 1`` chunks are in flight, so memory stays a few chunks'."""
    chunks = [(k, first, min(CHUNK, cfg.n_members - first)) for k, first in enumerate(range(0, cfg.n_members, CHUNK))]
    if workers <= 1 or len(chunks) < 2:
        for k, first, n in chunks:
            yield _chunk_tables(cfg, cat, k, first, n)
        return
    # spawn: the caller may run threads (progress bars, Dask), which fork does not copy safely
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = []
        for k, first, n in chunks:
            pending.append(pool.submit(_chunk_tables, cfg, cat, k, first, n))
            if len(pending) > workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def simulate(cfg: SimConfig, out_dir: Path, progress: bool = True, workers: int = 1) -> dict[str, int]:
    """Simulate ``cfg.n_members`` members into ``out_dir``; returns row counts per table.
    ``workers``: processes simulating chunks side by side (spawned: a script that asks for
    more than one needs the ``if __name__ == "__main__"`` guard)."""
    out_dir = Path(out_dir)
    for sub in ("raw", "ground_truth"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)  # with the parts an advance added
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    cat = make_catalogue(cfg)
    cat["items"].to_parquet(out_dir / "raw" / "items.parquet", index=False)
    cat["offers"].to_parquet(out_dir / "raw" / "offers.parquet", index=False)
    truth_offer = cat["effect"].merge(cat["offers"][["offer_id", "category_l1", "cost"]], on="offer_id")
    truth_offer.to_parquet(out_dir / "ground_truth" / "offer_effects.parquet", index=False)
    writers: dict[str, pq.ParquetWriter] = {}
    counts: dict[str, int] = {"raw/items": len(cat["items"]), "raw/offers": len(cat["offers"])}
    n_chunks = -(-cfg.n_members // CHUNK)
    try:
        bars = None if progress else True  # None: no bar when stdout is not a terminal
        parts = _chunks_in_order(cfg, cat, workers)
        for tables in tqdm(parts, total=n_chunks, desc="simulate", unit="chunk", disable=bars):
            for name, table in tables.items():
                if name not in writers:
                    writers[name] = pq.ParquetWriter(out_dir / f"{name}.parquet", table.schema)
                writers[name].write_table(table.cast(writers[name].schema))
                counts[name] = counts.get(name, 0) + table.num_rows
    finally:
        for w in writers.values():
            w.close()
    meta = {
        "config": {k: v for k, v in asdict(cfg).items()},
        "counts": counts,
        "cutoff": str(cfg.start_ts + pd.Timedelta(days=cfg.cutoff_day)),
        "end": str(cfg.end_ts),
        "days_simulated": cfg.days,  # grows with each `data simulate --advance`
    }
    (out_dir / "ground_truth" / "simulation.json").write_text(json.dumps(meta, indent=2, default=str))
    return counts
