"""Curated tables -> member feature snapshots for the Feast offline store.

Each table holds one row per (member, snapshot) with ``event_timestamp`` = snapshot time,
computed only from events strictly before it; Feast's point-in-time join then picks the
latest snapshot at or before each training row's timestamp, so nothing leaks from after
the label timestamp.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from features.sources import SNAPSHOT_TABLES
from features.store import OfflineTableWriter, write_offline_table
from kernel.curated import dataset_cutoff, load_curated, order_totals, read_meta
from kernel.settings import Settings
from models.btyd import MIN_REPEATERS, btyd_scores, rfm_summary
from training.data.tiers import tier_from_spend, tier_names

WINDOWS = (30, 90, 365)
HIGH_CONSUMPTION_ORDERS_90D = 2  # health quadrant: consumption activity threshold
HIGH_INTERACTION_EVENTS_30D = 1  # health quadrant: opens + clicks in the last 30 days
BTYD_HORIZON_DAYS = 90  # the horizon of the buy-till-you-die expectations (field names say 90d)
BTYD_MAX_FIT_MEMBERS = 50_000  # BG/NBD has 4 parameters: a fixed sample fits them as well as everyone
NO_PURCHASE_YET = -1.0  # BTYD fields of a member without a purchase before the snapshot


def snapshot_times(
    start: pd.Timestamp, end: pd.Timestamp, every_days: int, anchor: pd.Timestamp | None = None
) -> list[pd.Timestamp]:
    """Snapshots every ``every_days`` days through ``anchor`` (default ``end``), plus ``end``; oldest first.

    Anchoring the grid on the training cutoff makes the holdout rows at the cutoff read
    fresh features (not a snapshot up to ``every_days`` old); ``end`` feeds the online store.
    """
    anchor, end, step = (
        pd.Timestamp(anchor if anchor is not None else end),
        pd.Timestamp(end),
        pd.Timedelta(days=every_days),
    )
    times, t = {end}, anchor
    while t > start:
        times.add(t)
        t -= step
    t = anchor + step
    while t < end:
        times.add(t)
        t += step
    return sorted(times)


def health_quadrant(orders_90d: np.ndarray, interactions_30d: np.ndarray) -> np.ndarray:
    """Consumption activity (90 days) x interaction depth (30 days)."""
    buys = np.asarray(orders_90d) >= HIGH_CONSUMPTION_ORDERS_90D
    talks = np.asarray(interactions_30d) >= HIGH_INTERACTION_EVENTS_30D
    return np.select([buys & talks, buys & ~talks, ~buys & talks], ["active", "low-active", "churn-risk"], "silent")


def lifecycle_stage(tenure_days, recency_days, spend_90d, spend_prev_90d) -> np.ndarray:
    """new (<90 days) / decline (60+ days idle or spend halved) / growth (<1 year) / mature."""
    tenure, recency = np.asarray(tenure_days), np.asarray(recency_days)
    decline = (recency >= 60) | (np.asarray(spend_90d) < 0.5 * np.asarray(spend_prev_90d))
    return np.select([tenure < 90, decline, tenure < 365], ["new", "decline", "growth"], "mature")


def _rfm(orders: pd.DataFrame, members: pd.DataFrame, t: pd.Timestamp) -> pd.DataFrame:
    hist = orders[orders["ts"] < t]
    g = hist.groupby("member_id")
    out = pd.DataFrame(index=members.index)
    last = g["ts"].max().reindex(out.index)
    out["recency_days"] = ((t - last).dt.total_seconds() / 86400).fillna(9999.0)
    out["last_purchase_ts"] = (last.astype("int64") // 10**9).where(last.notna(), 0).astype("int64")
    for w in WINDOWS:
        recent = hist[hist["ts"] >= t - pd.Timedelta(days=w)].groupby("member_id")["amount"]
        out[f"frequency_{w}d"] = recent.size().reindex(out.index).fillna(0).astype("int64")
        out[f"monetary_{w}d"] = recent.sum().reindex(out.index).fillna(0.0)
    prev = hist[(hist["ts"] >= t - pd.Timedelta(days=180)) & (hist["ts"] < t - pd.Timedelta(days=90))]
    out["monetary_prev_90d"] = prev.groupby("member_id")["amount"].sum().reindex(out.index).fillna(0.0)
    out["aov_365d"] = (out["monetary_365d"] / out["frequency_365d"].replace(0, np.nan)).fillna(0.0)
    out["orders_total"] = g.size().reindex(out.index).fillna(0).astype("int64")
    out["tenure_days"] = (t - members["join_date"]).dt.total_seconds() / 86400
    return out


def _affinity(lines: pd.DataFrame, index: pd.Index, t: pd.Timestamp) -> pd.DataFrame:
    hist = lines[(lines["ts"] < t) & (lines["ts"] >= t - pd.Timedelta(days=365))]
    spend = hist.groupby(["member_id", "category_l1"])["amount"].sum()
    out = pd.DataFrame(index=index)
    if spend.empty:
        for k in (1, 2, 3):
            out[f"top_category_{k}"], out[f"top_category_{k}_share"] = "", 0.0
        out["category_entropy"], out["categories_365d"] = 0.0, 0
        return out
    share = spend / spend.groupby(level=0).transform("sum")
    ranked = share.sort_values(ascending=False).groupby(level=0).head(3).reset_index(name="share")
    ranked["k"] = ranked.groupby("member_id").cumcount() + 1
    wide = ranked.pivot(index="member_id", columns="k")
    for k in (1, 2, 3):
        cat = wide["category_l1"][k] if k in wide["category_l1"] else pd.Series(dtype=object)
        sh = wide["share"][k] if k in wide["share"] else pd.Series(dtype=float)
        out[f"top_category_{k}"] = cat.reindex(index).fillna("").astype(str)
        out[f"top_category_{k}_share"] = sh.reindex(index).fillna(0.0).astype(float)
    ent = (-(share * np.log(share)).groupby(level=0).sum()).reindex(index).fillna(0.0)
    out["category_entropy"] = ent
    out["categories_365d"] = share.groupby(level=0).size().reindex(index).fillna(0).astype("int64")
    return out


def _points(ledger: pd.DataFrame, index: pd.Index, t: pd.Timestamp) -> pd.DataFrame:
    hist = ledger[ledger["ts"] < t]
    g = hist.groupby("member_id")
    out = pd.DataFrame(index=index)
    # The ledger is chronological per member, so the last balance is the current one.
    out["points_balance"] = g["balance"].last().reindex(index).fillna(0).astype("int64")
    frozen = hist[hist["kind"] == "freeze"].groupby("member_id")["points"].sum()
    out["points_frozen"] = (-frozen).reindex(index).fillna(0).astype("int64")
    # FIFO: what expires within 30 days = earned with expiry <= t+30 minus already burned/expired.
    pos = hist[hist["points"] > 0]
    due = pos[pos["expires_at"] <= t + pd.Timedelta(days=30)].groupby("member_id")["points"].sum()
    used = -hist[hist["kind"].isin(["burn", "expire"])].groupby("member_id")["points"].sum()
    exp_soon = (due.reindex(index).fillna(0) - used.reindex(index).fillna(0)).clip(lower=0)
    out["points_expiring_30d"] = np.minimum(exp_soon, out["points_balance"]).astype("int64")
    recent = hist[hist["ts"] >= t - pd.Timedelta(days=90)]
    out["points_earned_90d"] = (
        recent[recent["points"] > 0].groupby("member_id")["points"].sum().reindex(index).fillna(0).astype("int64")
    )
    out["points_burned_90d"] = (
        (-recent[recent["kind"] == "burn"].groupby("member_id")["points"].sum())
        .reindex(index)
        .fillna(0)
        .astype("int64")
    )
    out["points_adjust_90d"] = (
        recent[recent["kind"] == "adjust"].groupby("member_id").size().reindex(index).fillna(0).astype("int64")
    )
    return out


def _engagement(eng: pd.DataFrame, index: pd.Index, t: pd.Timestamp) -> pd.DataFrame:
    out = pd.DataFrame(index=index)
    hist = eng[(eng["ts"] < t) & (eng["ts"] >= t - pd.Timedelta(days=90))]
    counts = hist.groupby(["member_id", "event"]).size().unstack(fill_value=0)
    for ev in ("send", "open", "click"):
        if ev not in counts:
            counts[ev] = 0
    counts = counts.reindex(index).fillna(0)
    out["sends_90d"] = counts["send"].astype("int64")
    out["open_rate_90d"] = (counts["open"] / counts["send"].replace(0, np.nan)).fillna(0.0).clip(0, 1)
    out["click_rate_90d"] = (counts["click"] / counts["send"].replace(0, np.nan)).fillna(0.0).clip(0, 1)
    last30 = hist[(hist["ts"] >= t - pd.Timedelta(days=30)) & hist["event"].isin(["open", "click"])]
    out["interactions_30d"] = last30.groupby("member_id").size().reindex(index).fillna(0).astype("int64")
    opens = hist[hist["event"] == "open"]
    best = (
        opens.groupby(["member_id", "hour"])
        .size()
        .reset_index(name="n")
        .sort_values(["member_id", "n", "hour"], ascending=[True, False, True])
    )
    out["best_send_hour"] = (
        best.drop_duplicates("member_id").set_index("member_id")["hour"].reindex(index).fillna(-1).astype("int64")
    )
    return out


def _btyd(orders: pd.DataFrame, index: pd.Index, t: pd.Timestamp) -> pd.DataFrame:
    """BG/NBD and Gamma-Gamma fitted on the orders before ``t`` alone (point-in-time, refitted at
    every snapshot), scored for every member; ``NO_PURCHASE_YET`` for members without a purchase."""
    columns = {
        "btyd_p_alive": "p_alive",
        "btyd_p_no_purchase_90d": "p_no_purchase",
        "btyd_expected_purchases_90d": "expected_purchases",
        "btyd_spend_per_purchase": "expected_spend_per_purchase",
        "btyd_expected_spend_90d": "expected_spend",
    }
    out = pd.DataFrame(NO_PURCHASE_YET, index=index, columns=[*columns, "btyd_mean_gap_days", "btyd_recency_over_gap"])
    hist = orders[orders["ts"] < t]
    repeaters = (hist.groupby("member_id")["ts"].nunique() > 1).sum() if len(hist) else 0
    if repeaters < MIN_REPEATERS:  # too early in the programme's history to fit anything
        return out
    summary = rfm_summary(hist, t)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # the optimiser probes extremes
        scores = btyd_scores(hist, t, BTYD_HORIZON_DAYS, max_fit_members=BTYD_MAX_FIT_MEMBERS, summary=summary)
    scored = scores.rename(columns={v: k for k, v in columns.items()}).reindex(index)
    # the member's own rhythm: mean days between purchase days, and the current gap in those units
    summary = summary.reindex(index)
    gap = summary["t_x"] / summary["x"].where(summary["x"] > 0)
    scored["btyd_mean_gap_days"] = gap
    scored["btyd_recency_over_gap"] = (summary["T"] - summary["t_x"]) / gap.where(gap > 0)
    return scored.fillna(NO_PURCHASE_YET).astype(float)


TIER_SINCE = "tier_since_ts"  # member_profile: when the tier was reached (unix s), carried to the next snapshot


@dataclass
class History:
    """The curated tables snapshots are computed from."""

    members: pd.DataFrame  # indexed by member_id
    orders: pd.DataFrame
    lines: pd.DataFrame
    ledger: pd.DataFrame
    engagement: pd.DataFrame

    @classmethod
    def load(cls, settings: Settings) -> History:
        members = load_curated(settings, "members").set_index("member_id")
        items = load_curated(settings, "items").set_index("item_id")
        txn = load_curated(settings, "transactions")
        lines = txn.assign(category_l1=txn["item_id"].map(items["category_l1"]).fillna("UNKNOWN"))
        return cls(
            members,
            order_totals(txn),
            lines,
            load_curated(settings, "points_ledger"),
            load_curated(settings, "engagement"),
        )


def snapshot(history: History, t: pd.Timestamp, tier_prev: pd.Series, tier_since: pd.Series) -> dict[str, pd.DataFrame]:
    """Every snapshot table at ``t`` (from events strictly before it) for the members joined by then.
    ``tier_prev``/``tier_since``: each member's tier level at the previous snapshot and since when
    (updated in place: the tier's start carries from one snapshot to the next)."""
    members = history.members
    joined = members.index[members["join_date"] <= t]
    if not len(joined):
        return {}
    m = members.loc[joined]
    rfm = _rfm(history.orders, m, t)
    eng_f = _engagement(history.engagement, joined, t)
    level = pd.Series(tier_from_spend(rfm["monetary_365d"].to_numpy(), rfm["recency_days"].to_numpy()), index=joined)
    changed = (level != tier_prev.reindex(joined)) | tier_since.reindex(joined).isna()
    tier_since.loc[joined[changed.to_numpy()]] = t
    tier_prev.loc[joined] = level
    profile = pd.DataFrame(index=joined)
    profile["tier"] = tier_names(level.to_numpy())
    profile["tier_level"] = level.astype("int64")
    since = tier_since.reindex(joined)
    profile["months_at_tier"] = ((t - since).dt.days / 30.44).round(1)
    profile["lifecycle_stage"] = lifecycle_stage(
        rfm["tenure_days"], rfm["recency_days"], rfm["monetary_90d"], rfm["monetary_prev_90d"]
    )
    profile["health_quadrant"] = health_quadrant(rfm["frequency_90d"], eng_f["interactions_30d"])
    profile["region"] = m["region"].astype(str)
    profile["city_tier"] = m["city_tier"].fillna(0).astype("int64")
    profile[TIER_SINCE] = since.astype("int64") // 10**9
    out = {
        "member_rfm": rfm,
        "member_profile": profile,
        "member_engagement": eng_f,
        "member_affinity": _affinity(history.lines, joined, t),
        "member_points": _points(history.ledger, joined, t),
        "member_btyd": _btyd(history.orders, joined, t),
    }
    return {name: df.rename_axis("member_id").reset_index().assign(event_timestamp=t) for name, df in out.items()}


def build_feature_tables(settings: Settings, progress: bool = True) -> dict[str, int]:
    """Compute every snapshot table into ``settings.offline_dir``; returns row counts."""
    meta = read_meta(settings)
    end = pd.Timestamp(meta["end"])
    history = History.load(settings)
    members, txn = history.members, history.orders
    start = min(txn["ts"].min(), members["join_date"].min()) if len(txn) else members["join_date"].min()
    times = snapshot_times(start, end, settings.snapshot_every_days, anchor=dataset_cutoff(meta, settings))

    tier_prev = pd.Series(0, index=members.index)
    tier_since = pd.Series(pd.NaT, index=members.index, dtype="datetime64[ns]")
    # each snapshot goes to disk as it is made: memory holds one snapshot, not the history of them
    with contextlib.ExitStack() as stack:
        writers = {name: stack.enter_context(OfflineTableWriter(settings, name)) for name in SNAPSHOT_TABLES}
        # disable=None: no bar when stdout is not a terminal (logs, CI)
        for t in tqdm(times, desc="feature snapshots", unit="snapshot", disable=None if progress else True):
            for name, df in snapshot(history, t, tier_prev, tier_since).items():
                df["event_timestamp"] = pd.to_datetime(df["event_timestamp"]).dt.tz_localize("UTC")
                writers[name].write(df)
    counts = {name: w.rows for name, w in writers.items()}
    return counts | _write_unversioned(settings, history)


def append_snapshot(settings: Settings, t: pd.Timestamp) -> dict[str, int]:
    """Add the snapshot at ``t`` alone to the offline store (the daily cycle): computed from the
    history once, appended to each table; the tier's start carries over from each member's latest
    earlier snapshot. A snapshot already stored at ``t`` is replaced, so a repeat is a no-op.
    Consent and the real-time seed (one row per member, no history) are rewritten."""
    t = pd.Timestamp(t)
    history = History.load(settings)
    stamp = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    earlier = pd.read_parquet(
        settings.offline_dir / "member_profile.parquet",
        columns=["member_id", "event_timestamp", "tier_level", TIER_SINCE],
        filters=[("event_timestamp", "<", stamp)],
    )
    last = earlier.sort_values("event_timestamp").drop_duplicates("member_id", keep="last").set_index("member_id")
    index = history.members.index
    tier_prev = last["tier_level"].reindex(index).fillna(0).astype("int64")
    tier_since = pd.to_datetime(last[TIER_SINCE].reindex(index), unit="s")
    counts = {}
    for name, df in snapshot(history, t.tz_localize(None) if t.tzinfo else t, tier_prev, tier_since).items():
        df["event_timestamp"] = pd.to_datetime(df["event_timestamp"]).dt.tz_localize("UTC")
        old = pd.read_parquet(settings.offline_dir / f"{name}.parquet")
        old = old[old["event_timestamp"] != stamp]
        write_offline_table(settings, name, pd.concat([old, df], ignore_index=True))
        counts[name] = len(df)
    return counts | _write_unversioned(settings, history)


def _write_unversioned(settings: Settings, history: History) -> dict[str, int]:
    """Consent (each member's current flags) and the batch source behind the push source."""
    consent = history.members.reset_index()[
        ["member_id", "consent_personalisation", "consent_push", "consent_sms", "consent_email", "consent_updated_at"]
    ]
    consent = consent.rename(columns={"consent_updated_at": "event_timestamp"})
    consent["event_timestamp"] = pd.to_datetime(consent["event_timestamp"]).dt.tz_localize("UTC")
    write_offline_table(settings, "member_consent", consent)
    # seeded with each member's last purchase
    last = history.orders.groupby("member_id")["ts"].max()
    realtime = pd.DataFrame(
        {
            "member_id": last.index,
            "event_timestamp": pd.to_datetime(last.to_numpy()).tz_localize("UTC"),
            "rt_last_event_type": "purchase",
            "rt_last_event_ts": (last.astype("int64") // 10**9).to_numpy(),
            "rt_last_purchase_ts": (last.astype("int64") // 10**9).to_numpy(),
        }
    )
    write_offline_table(settings, "member_realtime", realtime)
    return {"member_consent": len(consent), "member_realtime": len(realtime)}
