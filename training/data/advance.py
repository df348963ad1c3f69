"""The simulated world, continued: the next days of the same members under the same hidden truth,
in which members answer the offers the decision service actually sent.

:func:`advance_world` picks up where the world stands (``ground_truth/state``: alive, days since the
last purchase, points balance; the members' latent preferences are re-drawn from their chunk's
seed, so they are exactly those of the first simulation) and simulates ``days`` more days:
purchases, churn, weekly contacts and their opens, points earned. Each offer the service sent
(``treatment``) or held out (``control``) is answered from the true response model, so what the
service chose, explored or held back changes what happens next; a policy that sends nothing
changes nothing. Conversions land up to ``response_window_days`` after the exposure; those past
the last simulated day wait in ``ground_truth/pending`` for the next advance. The answers draw
from their own random stream, over the sends in a fixed order (time, member, offer): the same
sends give the same world whatever order the log lists them in (the service's decision ids are
random), and the days' purchase counts, contacts and churn no longer draw differently with the
number of sends.

Output: the days' new rows per contract table (the retailer's daily export), and ground truth
extended with the days (``ground_truth/exposures/<tag>.parquet``: each exposure's true conversion
probability with and without the offer, order value and cost). Points expiry and burns are not
simulated in advanced days (earnings only).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.points import EXPIRY_MONTHS
from training.data.simulator import (
    CATEGORIES,
    CHUNK,
    SimConfig,
    _category_order_value,
    _category_preference,
    _conversion_probs,
    _hazard,
    _make_latent,
    _season,
    conversion_lines,
    make_catalogue,
    order_lines,
)

SENT_COLUMNS = ["exposure_id", "member_id", "offer_id", "ts", "channel", "treatment", "propensity", "campaign_id"]
CONTACT_FACTOR = {"push": 0.6, "sms": 0.4, "email": 0.8}  # as in the simulation's engagement
PENDING_COLUMNS = ["exposure_id", "member_id", "offer_id", "conv_day", "category", "redeemed"]


class WorldError(ValueError):
    """The world cannot be advanced as asked (no state to continue from, sends outside the days)."""


def world_config(truth_dir: Path) -> tuple[SimConfig, dict]:
    path = truth_dir / "simulation.json"
    if not path.exists():
        raise WorldError(f"{path} missing: run `loyalty-ml data simulate` first")
    meta = json.loads(path.read_text())
    cfg = meta["config"] | {"campaign_offsets": tuple(meta["config"]["campaign_offsets"])}
    return SimConfig(**cfg), meta


def world_end(truth_dir: Path) -> pd.Timestamp:
    """The first moment the world has not simulated yet."""
    cfg, meta = world_config(truth_dir)
    return cfg.start_ts + pd.Timedelta(days=int(meta.get("days_simulated", cfg.days)))


def advance_world(dataset_dir: Path, days: int, sent: pd.DataFrame, members: pd.DataFrame) -> dict:
    """Simulate ``days`` more days. ``sent``: the exposures of these days (:data:`SENT_COLUMNS`);
    ``members``: the members' consent flags (raw members table). Writes the extended ground truth
    and the new world state; returns {"tables": {table: new rows}, "start", "end", "tag"}."""
    truth_dir = dataset_dir / "ground_truth"
    cfg, meta = world_config(truth_dir)
    if not (truth_dir / "state.parquet").exists():
        raise WorldError(
            f"{truth_dir}/state.parquet missing: this world was simulated before it could be continued;"
            " run `loyalty-ml data simulate` again"
        )
    if days < 1:
        raise WorldError(f"--advance must be at least 1 day, not {days}")
    d0 = int(meta.get("days_simulated", cfg.days))
    start = cfg.start_ts + pd.Timedelta(days=d0)
    end = start + pd.Timedelta(days=days)
    sent = (
        sent.reindex(columns=SENT_COLUMNS)
        .sort_values(["ts", "member_id", "offer_id", "channel", "campaign_id", "exposure_id"], kind="stable")
        .reset_index(drop=True)
    )
    outside = (sent["ts"] < start) | (sent["ts"] >= end)
    if outside.any():
        raise WorldError(f"{int(outside.sum())} exposures fall outside the advanced days [{start}, {end})")
    cat = make_catalogue(cfg)
    state = pd.read_parquet(truth_dir / "state.parquet").set_index("member_id")
    pending_path = truth_dir / "pending.parquet"
    pending = pd.read_parquet(pending_path) if pending_path.exists() else pd.DataFrame(columns=PENDING_COLUMNS)
    consent = members.drop_duplicates("member_id", keep="last").set_index("member_id")
    tag = f"a{d0:05d}"
    outputs: dict[str, list[pd.DataFrame]] = {}
    for chunk_no, first in enumerate(range(0, cfg.n_members, CHUNK)):
        n = min(CHUNK, cfg.n_members - first)
        ids = np.array([f"M{i:07d}" for i in range(first, first + n)], dtype=object)
        part = _advance_chunk(
            cfg,
            cat,
            chunk_no,
            first,
            n,
            d0,
            days,
            state.reindex(ids),
            pending[pending["member_id"].isin(ids)],
            sent[sent["member_id"].isin(ids)],
            consent.reindex(ids),
        )
        for name, df in part.items():
            outputs.setdefault(name, []).append(df)
    out = {name: pd.concat(frames, ignore_index=True) for name, frames in outputs.items()}
    (truth_dir / "exposures").mkdir(exist_ok=True)
    out.pop("truth_exposures").to_parquet(truth_dir / "exposures" / f"{tag}.parquet", index=False)
    out.pop("state").to_parquet(truth_dir / "state.parquet", index=False)
    out.pop("pending").to_parquet(pending_path, index=False)
    meta["days_simulated"] = d0 + days
    meta["end"] = str(end)
    (truth_dir / "simulation.json").write_text(json.dumps(meta, indent=2, default=str))
    return {"tables": out, "start": start, "end": end, "tag": tag}


def _advance_chunk(cfg, cat, chunk_no, first, n, d0, days, state, pending, sent, consent) -> dict[str, pd.DataFrame]:
    # the latent draws come first from the chunk's own stream: the same members as simulated
    lat = _make_latent(cfg, cat, np.random.default_rng(np.random.SeedSequence([cfg.seed, chunk_no])), first, n)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, chunk_no, 1_000_000 + d0]))
    answer_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, chunk_no, 2_000_000 + d0]))
    row_of = pd.Index(lat.ids)
    alive = state["alive"].fillna(False).to_numpy(bool)
    recency = state["recency"].fillna(0.0).to_numpy(float)
    cat_pref, order_value = _category_preference(lat, cat), _category_order_value(lat, cat)
    offers, effect = cat["offers"], cat["effect"]
    offer_pos = pd.Index(offers["offer_id"])
    offer_cat = offers["category_l1"].map({c: i for i, c in enumerate(CATEGORIES)}).to_numpy()
    season = _season(np.arange(d0, d0 + days), cfg.start_ts)
    sent = sent.assign(day=((sent["ts"] - cfg.start_ts) // pd.Timedelta(days=1)).astype("int64"))
    unknown = offer_pos.get_indexer(sent["offer_id"]) < 0
    if unknown.any():
        raise WorldError(f"offer {sent['offer_id'][unknown].iloc[0]!r} is not in the simulated catalogue")
    order_member, order_day, conversions, truth = [], [], [pending], []
    contacts = []
    for i, d in enumerate(range(d0, d0 + days)):
        active = alive & (lat.join_day <= d)
        k = rng.poisson(lat.rate * season[i]) * active
        bought = k > 0
        order_member.append(np.repeat(np.nonzero(bought)[0], k[bought]))
        order_day.append(np.full(int(k.sum()), d))
        today = sent[sent["day"] == d]
        if len(today):
            rows = row_of.get_indexer(today["member_id"])
            oidx = offer_pos.get_indexer(today["offer_id"])
            treated = today["treatment"].to_numpy(bool)
            p0, p1 = _conversion_probs(lat, cat_pref, effect, offer_cat, rows, oidx)
            p0, p1 = p0 * active[rows], p1 * active[rows]  # members who have left never answer
            converted = answer_rng.random(len(rows)) < np.where(treated, p1, p0)
            redeem_rate = effect["redeem_rate"].to_numpy()[oidx]
            redeemed = converted & treated & (answer_rng.random(len(rows)) < redeem_rate)
            delay = answer_rng.integers(0, cfg.response_window_days, len(rows))
            bought[rows[converted]] = True
            conversions.append(
                pd.DataFrame(
                    {
                        "exposure_id": today["exposure_id"].to_numpy()[converted],
                        "member_id": lat.ids[rows[converted]],
                        "offer_id": today["offer_id"].to_numpy()[converted],
                        "conv_day": d + delay[converted],
                        "category": offer_cat[oidx[converted]],
                        "redeemed": redeemed[converted],
                    }
                )
            )
            truth.append(
                pd.DataFrame(
                    {
                        "exposure_id": today["exposure_id"].to_numpy(),
                        "offer_id": today["offer_id"].to_numpy(),
                        "campaign_id": today["campaign_id"].to_numpy(),
                        "treatment": treated,
                        "p_convert_control": p0,
                        "p_convert_treated": p1,
                        "order_value": order_value[rows, offer_cat[oidx]],
                        "cost": np.where(treated, p1 * redeem_rate * offers["cost"].to_numpy()[oidx], 0.0),
                    }
                )
            )
        contacts.append(_contacts(cfg, rng, lat, consent, active, d))
        recency = np.where(bought, 0.0, recency + 1.0)
        dies = rng.random(n) < _hazard(lat, recency)
        alive &= ~dies

    conv = pd.concat(conversions, ignore_index=True)
    due = conv["conv_day"].to_numpy() < d0 + days
    txn, responses = _orders(cfg, cat, rng, lat, chunk_no, d0, order_member, order_day, conv[due])
    ledger = _earnings(cat, txn, state["points_balance"].fillna(0).astype("int64"), f"A{d0}C{chunk_no}P")
    exposures = sent.drop(columns="day")
    balance = ledger.groupby("member_id")["balance"].last().reindex(lat.ids)
    new_state = pd.DataFrame(
        {
            "member_id": lat.ids,
            "alive": alive,
            "recency": recency,
            "points_balance": balance.fillna(state["points_balance"].fillna(0)).astype("int64").to_numpy(),
        }
    )
    empty_truth = pd.DataFrame(columns=["exposure_id", "offer_id", "campaign_id", "treatment"])
    return {
        "transactions": txn,
        "exposures": exposures,
        "responses": responses,
        "engagement": pd.concat(contacts, ignore_index=True),
        "points_ledger": ledger,
        "truth_exposures": pd.concat(truth, ignore_index=True) if truth else empty_truth,
        "state": new_state,
        "pending": conv.loc[~due].reset_index(drop=True),
    }


def _orders(cfg, cat, rng, lat, chunk_no, d0, order_member, order_day, conv) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transaction lines of the days' regular orders and of the conversions now due, and the
    response (conversion, redemption, revenue) of each of those conversions."""
    items = cat["items"]
    om, od = np.concatenate(order_member), np.concatenate(order_day)
    parts = [order_lines(rng, cfg, items, lat, om, od, f"A{d0}C{chunk_no}R")]
    responses = pd.DataFrame(
        columns=["exposure_id", "member_id", "offer_id", "redeemed", "converted", "response_ts", "revenue"]
    )
    if len(conv):
        rows = pd.Index(lat.ids).get_indexer(conv["member_id"])
        cats = conv["category"].to_numpy(int)
        conv_ids = ("X" + conv["exposure_id"].astype(str)).to_numpy(dtype=object)
        days = conv["conv_day"].to_numpy(int)
        lines = conversion_lines(rng, cfg, items, cat["item_category"], lat, rows, days, cats, conv_ids)
        parts.append(lines)
        responses = pd.DataFrame(
            {
                "exposure_id": conv["exposure_id"].to_numpy(),
                "member_id": conv["member_id"].to_numpy(),
                "offer_id": conv["offer_id"].to_numpy(),
                "redeemed": conv["redeemed"].to_numpy(bool),
                "converted": True,
                "response_ts": lines["ts"].to_numpy(),
                "revenue": lines["amount"].to_numpy(),
            }
        )
    return pd.concat(parts, ignore_index=True), responses


def _contacts(cfg, rng, lat, consent, active, d) -> pd.DataFrame:
    """One day of contacts: each consented channel sends about weekly; opens lean to the best hour."""
    frames = []
    for ch, factor in CONTACT_FACTOR.items():
        flag = consent[f"consent_{ch}"].astype("boolean").fillna(False).to_numpy(bool)
        m = np.nonzero(flag & (lat.join_day <= d) & (rng.random(len(lat.ids)) < 1 / 7))[0]
        if not len(m):
            continue
        send_hour = rng.integers(9, 21, len(m))
        gap = np.abs(send_hour - lat.best_hour[m])
        closeness = np.exp(-np.minimum(gap, 24 - gap) / 4.0)
        # members who have left still receive contacts; they no longer open them
        opened = active[m] & (rng.random(len(m)) < lat.engagement[m] * factor * (0.4 + 0.6 * closeness))
        clicked = opened & (rng.random(len(m)) < 0.35)
        open_hour = np.where(rng.random(len(m)) < 0.7, lat.best_hour[m], send_hour)
        base = cfg.start_ts + pd.Timedelta(days=d)
        for event, mask, hour in (
            ("send", np.ones(len(m), bool), send_hour),
            ("open", opened, open_hour),
            ("click", clicked, (open_hour + 1) % 24),
        ):
            frames.append(
                pd.DataFrame(
                    {
                        "member_id": lat.ids[m[mask]],
                        "ts": base + pd.to_timedelta(hour[mask], unit="h"),
                        "channel": ch,
                        "event": event,
                        "hour": hour[mask],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _earnings(cat, txn: pd.DataFrame, balance: pd.Series, prefix: str) -> pd.DataFrame:
    """Points earned on the new orders (1 per currency unit x the category coefficient), balances
    running on from each member's current one."""
    coef = cat["items"].set_index("item_id")["category_l1"].map(cat["category_coef"])
    earn = (
        txn.assign(pts=txn["amount"] * txn["item_id"].map(coef).fillna(1.0))
        .groupby(["member_id", "order_id"], as_index=False)
        .agg(ts=("ts", "min"), points=("pts", "sum"))
    )
    earn["points"] = np.floor(earn["points"]).astype("int64")
    earn = earn[earn["points"] > 0].sort_values(["member_id", "ts", "order_id"], kind="stable")
    start = earn["member_id"].map(balance).fillna(0).astype("int64")
    earn["balance"] = start + earn.groupby("member_id")["points"].cumsum()
    expires = pd.DatetimeIndex(earn["ts"]) + pd.DateOffset(months=EXPIRY_MONTHS) + pd.offsets.MonthEnd(0)
    return pd.DataFrame(
        {
            "entry_id": prefix + pd.Series(np.arange(len(earn)), dtype="int64").astype(str).to_numpy(),
            "member_id": earn["member_id"].to_numpy(),
            "ts": earn["ts"].to_numpy(),
            "kind": "earn",
            "points": earn["points"].to_numpy(),
            "balance": earn["balance"].to_numpy(),
            "expires_at": expires.normalize(),
            "order_id": earn["order_id"].to_numpy(),
        }
    )
