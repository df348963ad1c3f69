"""Training and holdout sets: labels from curated tables, features from Feast (point in time).

Time layout (``cutoff`` from :func:`kernel.curated.dataset_cutoff`): models train on
label windows that close before the cutoff, and are evaluated on the window after it, so
no training label is observed after the moment the model would have been deployed.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
from feast import FeatureStore

from features.store import get_store, training_frame
from kernel.curated import dataset_cutoff, load_curated, order_totals, read_meta
from kernel.settings import Settings

ORDERS_MEMORY_LIMIT = "4GB"  # DuckDB spills to disk past it: the order totals stay bounded


@dataclass
class TrainingContext:
    settings: Settings
    store: FeatureStore
    meta: dict
    cutoff: pd.Timestamp
    end: pd.Timestamp
    window: pd.Timedelta

    @property
    def simulated(self) -> bool:
        return self.meta.get("source") == "simulator" and self.settings.ground_truth_dir.exists()

    @property
    def oracle_comparable(self) -> bool:
        """Ground-truth churn is exact only for the simulator's own cutoff and window."""
        return self.simulated and int(self.meta.get("label_window_days", -1)) == self.settings.label_window_days

    def truth(self, name: str) -> pd.DataFrame:
        from training.data.simulator import read_truth

        return read_truth(self.settings.ground_truth_dir, name)


def context(settings: Settings) -> TrainingContext:
    meta = read_meta(settings)
    if not settings.registry_path.exists() and settings.profile.value == "embedded":
        raise FileNotFoundError("Feast registry missing: run `loyalty-ml features build/apply/materialize` first")
    cutoff, window = dataset_cutoff(meta, settings), pd.Timedelta(days=settings.label_window_days)
    check_history(meta, cutoff, window, settings.label_window_days)
    return TrainingContext(
        settings=settings,
        store=get_store(settings),
        meta=meta,
        cutoff=cutoff,
        end=pd.Timestamp(meta["end"]),
        window=window,
    )


class JobNotApplicable(Exception):
    """The dataset lacks what a job needs (e.g. no campaign exposures); ``train all`` skips it."""


class HistoryTooShort(ValueError):
    """The data's history cannot hold the training, validation and test windows: a setting to lower."""


def check_history(meta: dict, cutoff: pd.Timestamp, window: pd.Timedelta, window_days: int) -> None:
    """Jobs need history before the validation window, which precedes the test window after the cutoff."""
    if meta.get("start") is None:
        return
    start, end = pd.Timestamp(meta["start"]), pd.Timestamp(meta["end"])
    days = (end - start).days
    if cutoff - 2 * window <= start:
        raise HistoryTooShort(
            f"label_window_days={window_days} is too long for {days} days of history: training, validation and "
            f"test windows need more than {3 * window_days} days; lower LOYALTY_LABEL_WINDOW_DAYS "
            f"(at most {max(days // 3 - 1, 1)} here)"
        )


def training_times(ctx: TrainingContext, n: int) -> list[pd.Timestamp]:
    """The ``n`` latest snapshot times whose label window closes by the cutoff."""
    step = pd.Timedelta(days=ctx.settings.snapshot_every_days)
    t = ctx.cutoff - step * -(-ctx.window // step)  # first grid point with t + window <= cutoff
    times = []
    while len(times) < n and t - ctx.window > ctx.end - pd.Timedelta(days=10 * 365):
        times.append(t)
        t -= step
    return sorted(times)


def orders(settings: Settings, max_members: int | None = None) -> pd.DataFrame:
    """One row per (member, order), as :func:`kernel.curated.order_totals` gives, aggregated by
    DuckDB straight from the curated parquet: pandas would hold every line of every column
    (58M lines at a million members) before grouping them. ``max_members``: only the orders of
    :func:`sampled_members`' members (the same members it keeps from every member with an
    order), filtered inside DuckDB, so the programme's other orders never reach pandas."""
    path = settings.curated_dir / "transactions.parquet"
    if not path.exists():
        return order_totals(load_curated(settings, "transactions"))  # its error names the step to run
    valid = "member_id IS NOT NULL AND order_id IS NOT NULL"  # pandas' groupby leaves them out
    with duckdb.connect() as con:
        con.execute(f"SET memory_limit = '{ORDERS_MEMORY_LIMIT}'")
        where = valid
        if max_members is not None:
            ids = con.execute(f"SELECT DISTINCT member_id FROM read_parquet(?) WHERE {valid}", [str(path)]).df()
            keep = sampled_members(ids["member_id"], max_members, settings.seed)
            if not keep.all():
                con.register("sampled", ids[keep])
                where += " AND member_id IN (SELECT member_id FROM sampled)"
        return con.execute(
            f"SELECT member_id, order_id, min(ts) AS ts, sum(amount) AS amount FROM read_parquet(?) WHERE {where} "
            "GROUP BY member_id, order_id ORDER BY member_id, order_id",
            [str(path)],
        ).df()


def known_adjusted_orders(settings: Settings) -> pd.Index:
    """The order ids that points adjustments name and the transactions hold: all that
    :func:`models.fraud.ledger_features` tests against (the programme's whole order index
    would be ten million ids at a million members)."""
    txn, ledger = settings.curated_dir / "transactions.parquet", settings.curated_dir / "points_ledger.parquet"
    with duckdb.connect() as con:
        con.execute(f"SET memory_limit = '{ORDERS_MEMORY_LIMIT}'")
        found = con.execute(
            "SELECT DISTINCT order_id FROM read_parquet(?) WHERE order_id IN "
            "(SELECT order_id FROM read_parquet(?) WHERE kind = 'adjust' AND order_id IS NOT NULL)",
            [str(txn), str(ledger)],
        ).df()
    return pd.Index(found["order_id"].sort_values().to_numpy(), name="order_id")


def member_labels(order_table: pd.DataFrame, times: list[pd.Timestamp], window: pd.Timedelta) -> pd.DataFrame:
    """One row per (customer, t): members with an order before t; churned = no order in [t, t+window)."""
    rows = []
    for t in times:
        before = order_table[order_table["ts"] < t]
        customers = pd.Index(before["member_id"].unique(), name="member_id")
        nxt = order_table[(order_table["ts"] >= t) & (order_table["ts"] < t + window)]
        spend = nxt.groupby("member_id")["amount"].sum().reindex(customers).fillna(0.0)
        frame = pd.DataFrame({"member_id": customers, "event_timestamp": t})
        frame["churned"] = (spend.to_numpy() == 0).astype(int)
        frame["spend_next"] = spend.to_numpy()
        rows.append(frame)
    out = pd.concat(rows, ignore_index=True)
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"]).dt.tz_localize("UTC")
    return out


def sampled_members(ids, max_members: int, seed: int) -> np.ndarray:
    """A boolean mask keeping about ``max_members`` of the distinct ``ids`` (all when fewer).

    A member is in or out by a seeded hash of the id, so the same members are kept at every
    snapshot time, in every job and on every run, and a member's rows are never split."""
    ids = pd.Series(np.asarray(ids))
    n = ids.nunique()
    if n <= max_members:
        return np.ones(len(ids), dtype=bool)
    h = pd.util.hash_pandas_object(ids, index=False, hash_key=f"{seed:016d}"[:16]).to_numpy()
    return (h % np.uint64(1 << 32)) < np.uint64(int(max_members / n * (1 << 32)))


def cutoff_labels(
    ctx: TrainingContext, n_snapshots: int, order_table: pd.DataFrame | None = None
) -> tuple[list[pd.Timestamp], pd.DataFrame, pd.DataFrame]:
    """Training cutoffs, their label frames and the holdout label frame at the cutoff (churn and value),
    each for at most ``training_max_members`` sampled members (``order_table``: their orders,
    ``orders(settings, settings.training_max_members)``, when the caller has them already)."""
    if order_table is None:
        order_table = orders(ctx.settings, ctx.settings.training_max_members)
    times = training_times(ctx, n_snapshots)
    return times, member_labels(order_table, times, ctx.window), member_labels(order_table, [ctx.cutoff], ctx.window)


def check_snapshot_decay(decay: float) -> None:
    """A ValueError unless ``decay`` (each snapshot's weight relative to the next) lies in [0, 1]."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"snapshot decay must lie in [0, 1], not {decay!r}")


def snapshot_weights(event_timestamp, decay: float) -> np.ndarray:
    """Row weights that fall by ``decay`` per training snapshot back from the latest (weight 1):
    members change between the earliest snapshot and the cutoff (tenure, season, the programme
    itself), so the snapshots nearest the window being predicted count most. ``decay`` 1: all alike."""
    check_snapshot_decay(decay)
    ts = pd.Series(pd.to_datetime(event_timestamp))
    age = ts.rank(method="dense", ascending=False).to_numpy() - 1.0  # 0 = the latest snapshot
    return np.power(decay, age)


def require_repeat_buyers(labels: pd.DataFrame, window_days: int, where: str, need_churners: bool = True) -> None:
    """Value labels need members who bought again within a window; churn labels also some who did not."""
    bought_again = int((labels["churned"] == 0).sum())
    if bought_again == 0:
        raise JobNotApplicable(
            f"no member bought again within label_window_days={window_days} in the {where}: members with one "
            "purchase each give no churn or value signal; import more history, or a longer "
            "LOYALTY_LABEL_WINDOW_DAYS if the history holds it"
        )
    if need_churners and bought_again == len(labels):
        raise JobNotApplicable(
            f"every member bought again within label_window_days={window_days} in the {where}: no churn to learn; "
            "a shorter LOYALTY_LABEL_WINDOW_DAYS gives both outcomes"
        )


def with_features(ctx: TrainingContext, entity_df: pd.DataFrame, service: str) -> pd.DataFrame:
    return training_frame(ctx.store, entity_df, service)


def member_frames(
    ctx: TrainingContext, n_snapshots: int, service: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The churn and value jobs' frames: the sampled members' orders, the training snapshots' labels
    with their point-in-time features, and the holdout's (what a bench scores the jobs' models on)."""
    order_table = orders(ctx.settings, ctx.settings.training_max_members)
    _, train_labels, test_labels = cutoff_labels(ctx, n_snapshots, order_table)
    return order_table, with_features(ctx, train_labels, service), with_features(ctx, test_labels, service)


def feature_refs(ctx: TrainingContext, service: str) -> list[str]:
    fs = ctx.store.get_feature_service(service)
    return [f"{p.name}:{f.name}" for p in fs.feature_view_projections for f in p.features]
