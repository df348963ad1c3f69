"""Points ledger rules: 1 point per currency unit x category coefficient, burns, FIFO expiry."""

from __future__ import annotations

import numpy as np
import pandas as pd

EXPIRY_MONTHS = 12  # points lapse at the end of the month twelve months after earning
LEDGER_COLUMNS = ["entry_id", "member_id", "ts", "kind", "points", "balance", "expires_at", "order_id", "fraud"]


def derive_points_ledger(
    txn: pd.DataFrame,
    item_coefficient: pd.Series | None,
    end: pd.Timestamp,
    rng: np.random.Generator | None = None,
    extra_events: list[pd.DataFrame] | None = None,
    burn_probability: float = 0.2,
) -> pd.DataFrame:
    """Build a ledger from transactions (and optional extra adjust events).

    ``item_coefficient`` maps item_id -> points per currency unit (default 1). Burns are
    simulated with ``burn_probability`` when ``rng`` is given (adapters pass none: the
    public data sets record no redemptions of points).
    """
    coef = 1.0 if item_coefficient is None else txn["item_id"].map(item_coefficient).fillna(1.0).to_numpy()
    earn = (
        txn.assign(pts=txn["amount"] * coef)
        .groupby(["member_id", "order_id"], as_index=False)
        .agg(ts=("ts", "min"), points=("pts", "sum"))
    )
    earn["points"] = np.floor(earn["points"]).astype(np.int64)
    earn = earn[earn["points"] > 0].assign(kind="earn", fraud=False)
    ev = pd.concat([earn, *(extra_events or [])], ignore_index=True)
    ev = ev.sort_values(["member_id", "ts", "order_id"], kind="stable").reset_index(drop=True)
    return _accumulate(ev, pd.Timestamp(end), rng, burn_probability if rng is not None else 0.0)


def _accumulate(ev: pd.DataFrame, end: pd.Timestamp, rng, burn_probability: float) -> pd.DataFrame:
    """Walk each member's events in time order: balances, burns and FIFO expiry.

    Burns consume the oldest points first, so what lapses is what is still unspent.
    Records are emitted in chronological order per member, so balance == cumsum(points).
    """
    member = ev["member_id"].to_numpy()
    ts_idx = pd.DatetimeIndex(ev["ts"])
    expiry = (ts_idx + pd.DateOffset(months=EXPIRY_MONTHS) + pd.offsets.MonthEnd(0)).normalize().to_numpy()
    ts = ts_idx.to_numpy()
    pts = ev["points"].to_numpy()
    kind = ev["kind"].to_numpy()
    order = ev["order_id"].to_numpy()
    fraud = ev["fraud"].to_numpy().astype(bool)
    u = rng.random(len(ev)) if rng is not None else np.ones(len(ev))
    end64 = np.datetime64(end)
    rec: list[tuple] = []

    def lapse_until(st: dict, now) -> None:
        while st["buckets"] and st["buckets"][0][0] < now:
            exp_at = st["buckets"][0][0]
            due = sum(v for e, v in st["buckets"] if e <= exp_at)
            st["buckets"] = [b for b in st["buckets"] if b[0] > exp_at]
            st["earned_due"] += due
            lapse = max(0, st["earned_due"] - st["burned"] - st["expired"])
            if lapse:
                st["expired"] += lapse
                st["balance"] -= lapse
                rec.append((st["member"], exp_at, "expire", -lapse, st["balance"], None, None, False))

    st: dict | None = None
    for i in range(len(ev)):
        if st is None or member[i] != st["member"]:
            if st is not None:
                lapse_until(st, end64)
            st = {"member": member[i], "balance": 0, "buckets": [], "earned_due": 0, "burned": 0, "expired": 0}
        lapse_until(st, ts[i])
        st["balance"] += int(pts[i])
        st["buckets"].append((expiry[i], int(pts[i])))
        rec.append((member[i], ts[i], kind[i], int(pts[i]), st["balance"], expiry[i], order[i], fraud[i]))
        burn = 0
        if fraud[i] and st["balance"] >= 1500:
            burn = st["balance"]  # farmers cash out at once
        elif st["balance"] >= 500 and u[i] < burn_probability:
            burn = min(500 * (st["balance"] // 1000 + 1), st["balance"])
        if burn:
            st["burned"] += burn
            st["balance"] -= burn
            rec.append((member[i], ts[i], "burn", -burn, st["balance"], None, None, bool(fraud[i])))
    if st is not None:
        lapse_until(st, end64)
    out = pd.DataFrame(rec, columns=LEDGER_COLUMNS[1:])
    out.insert(0, "entry_id", np.char.add("P", np.arange(len(out)).astype(str)).astype(object))
    out["ts"] = pd.to_datetime(out["ts"])
    out["expires_at"] = pd.to_datetime(out["expires_at"])
    return out
