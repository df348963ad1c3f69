"""Curated tables -> member feature snapshots for the Feast offline store.

Each table holds one row per (member, snapshot) with ``event_timestamp`` = snapshot time,
computed only from events strictly before it; Feast's point-in-time join then picks the
latest snapshot at or before each training row's timestamp, so nothing leaks from after
the label timestamp.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from features.sources import SNAPSHOT_TABLES
from features.store import OfflineTableWriter
from kernel.constants import EVENT_TIMESTAMP
from kernel.curated import dataset_cutoff, order_totals, read_meta
from kernel.settings import Settings
from models.btyd import MIN_REPEATERS, BuyTillYouDie, rfm_summary
from training.data.tiers import tier_from_spend, tier_names
from training.partitions import partition_count, split_table

WINDOWS = (30, 90, 365)
HIGH_CONSUMPTION_ORDERS_90D = 2  # health quadrant: consumption activity threshold
HIGH_INTERACTION_EVENTS_30D = 1  # health quadrant: opens + clicks in the last 30 days
BTYD_HORIZON_DAYS = 90  # the horizon of the buy-till-you-die expectations (field names say 90d)
BTYD_MAX_FIT_MEMBERS = 20_000  # BG/NBD has 4 parameters: a fixed sample fits them as well as everyone
NO_PURCHASE_YET = -1.0  # BTYD fields of a member without a purchase before the snapshot
DUCKDB_MEMORY_LIMIT = "2GB"  # the daily tier carry-over's aggregation spills past it


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


def _window(events: pd.DataFrame, start: pd.Timestamp | None, end: pd.Timestamp | None) -> pd.DataFrame:
    """The rows with ``start <= ts < end`` (an open side when None). On rows in time order (as
    :class:`History` keeps them) a slice found by binary search, no copy: a snapshot reads its
    windows dozens of times over the whole history."""
    ts = events["ts"]
    if not ts.is_monotonic_increasing:
        keep = np.ones(len(events), dtype=bool)
        if start is not None:
            keep &= (ts >= start).to_numpy()
        if end is not None:
            keep &= (ts < end).to_numpy()
        return events[keep]
    values = ts.to_numpy()
    lo = 0 if start is None else int(np.searchsorted(values, np.datetime64(start), side="left"))
    hi = len(values) if end is None else int(np.searchsorted(values, np.datetime64(end), side="left"))
    return events.iloc[lo : max(lo, hi)]


def _rfm(orders: pd.DataFrame, members: pd.DataFrame, t: pd.Timestamp) -> pd.DataFrame:
    hist = _window(orders, None, t)
    g = hist.groupby("member_id")
    out = pd.DataFrame(index=members.index)
    last = g["ts"].max().reindex(out.index)
    out["recency_days"] = ((t - last).dt.total_seconds() / 86400).fillna(9999.0)
    out["last_purchase_ts"] = (last.astype("int64") // 10**9).where(last.notna(), 0).astype("int64")
    for w in WINDOWS:
        recent = _window(hist, t - pd.Timedelta(days=w), None).groupby("member_id")["amount"]
        out[f"frequency_{w}d"] = recent.size().reindex(out.index).fillna(0).astype("int64")
        out[f"monetary_{w}d"] = recent.sum().reindex(out.index).fillna(0.0)
    prev = _window(hist, t - pd.Timedelta(days=180), t - pd.Timedelta(days=90))
    out["monetary_prev_90d"] = prev.groupby("member_id")["amount"].sum().reindex(out.index).fillna(0.0)
    out["aov_365d"] = (out["monetary_365d"] / out["frequency_365d"].replace(0, np.nan)).fillna(0.0)
    out["orders_total"] = g.size().reindex(out.index).fillna(0).astype("int64")
    out["tenure_days"] = (t - members["join_date"]).dt.total_seconds() / 86400
    return out


def _affinity(lines: pd.DataFrame, index: pd.Index, t: pd.Timestamp) -> pd.DataFrame:
    hist = _window(lines, t - pd.Timedelta(days=365), t)
    spend = hist.groupby(["member_id", "category_l1"], observed=True)["amount"].sum()
    out = pd.DataFrame(index=index)
    if spend.empty:
        for k in (1, 2, 3):
            out[f"top_category_{k}"], out[f"top_category_{k}_share"] = "", 0.0
        out["category_entropy"], out["categories_365d"] = 0.0, 0
        return out
    share = spend / spend.groupby(level=0).transform("sum")
    # ties broken by category name: the same top categories however the rows were ordered
    ranked = share.reset_index(name="share").astype({"category_l1": str})
    ranked = ranked.sort_values(["share", "category_l1"], ascending=[False, True])
    ranked = ranked.groupby("member_id").head(3)
    ranked["k"] = ranked.groupby("member_id").cumcount() + 1
    wide = ranked.pivot(index="member_id", columns="k")
    for k in (1, 2, 3):
        cat = wide["category_l1"][k] if k in wide["category_l1"] else pd.Series(dtype=object)
        sh = wide["share"][k] if k in wide["share"] else pd.Series(dtype=float)
        out[f"top_category_{k}"] = cat.reindex(index).fillna("").astype(str)
        out[f"top_category_{k}_share"] = sh.reindex(index).fillna(0.0).astype(float)
    # a category of no net spend adds nothing to the entropy (as 0 log 0 = 0), and no log(0) warning
    positive = share.where(share > 0)
    ent = (-(positive * np.log(positive)).groupby(level=0).sum()).reindex(index).fillna(0.0)
    out["category_entropy"] = ent
    out["categories_365d"] = share.groupby(level=0).size().reindex(index).fillna(0).astype("int64")
    return out


def _points(ledger: pd.DataFrame, index: pd.Index, t: pd.Timestamp) -> pd.DataFrame:
    hist = _window(ledger, None, t)
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
    recent = _window(hist, t - pd.Timedelta(days=90), None)
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
    hist = _window(eng, t - pd.Timedelta(days=90), t)
    counts = hist.groupby(["member_id", "event"], observed=True).size().unstack(fill_value=0)
    for ev in ("send", "open", "click"):
        if ev not in counts:
            counts[ev] = 0
    counts = counts.reindex(index).fillna(0)
    out["sends_90d"] = counts["send"].astype("int64")
    out["open_rate_90d"] = (counts["open"] / counts["send"].replace(0, np.nan)).fillna(0.0).clip(0, 1)
    out["click_rate_90d"] = (counts["click"] / counts["send"].replace(0, np.nan)).fillna(0.0).clip(0, 1)
    last30 = _window(hist, t - pd.Timedelta(days=30), None)
    last30 = last30[last30["event"].isin(["open", "click"])]
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


def fit_btyd(orders: pd.DataFrame, t: pd.Timestamp) -> BuyTillYouDie | None:
    """BG/NBD and Gamma-Gamma fitted on the orders before ``t`` alone (point-in-time, refitted
    at every snapshot); None too early in the programme's history to fit anything."""
    hist = _window(orders, None, t)
    repeaters = (hist.groupby("member_id")["ts"].nunique() > 1).sum() if len(hist) else 0
    if repeaters < MIN_REPEATERS:
        return None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # the optimiser probes extremes
        return BuyTillYouDie().fit(rfm_summary(hist, t), max_fit_members=BTYD_MAX_FIT_MEMBERS)


def _btyd(orders: pd.DataFrame, index: pd.Index, t: pd.Timestamp, fitted: BuyTillYouDie | None) -> pd.DataFrame:
    """``fitted`` (:func:`fit_btyd` at ``t``) scored for every member; ``NO_PURCHASE_YET`` for
    members without a purchase, and for everyone when nothing could be fitted."""
    columns = {
        "btyd_p_alive": "p_alive",
        "btyd_p_no_purchase_90d": "p_no_purchase",
        "btyd_expected_purchases_90d": "expected_purchases",
        "btyd_spend_per_purchase": "expected_spend_per_purchase",
        "btyd_expected_spend_90d": "expected_spend",
    }
    out = pd.DataFrame(NO_PURCHASE_YET, index=index, columns=[*columns, "btyd_mean_gap_days", "btyd_recency_over_gap"])
    hist = _window(orders, None, t)
    if fitted is None or not len(hist):
        return out
    summary = rfm_summary(hist, t)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        scores = fitted.score(summary, BTYD_HORIZON_DAYS)
    scored = scores.rename(columns={v: k for k, v in columns.items()}).reindex(index)
    # the member's own rhythm: mean days between purchase days, and the current gap in those units
    summary = summary.reindex(index)
    gap = summary["t_x"] / summary["x"].where(summary["x"] > 0)
    scored["btyd_mean_gap_days"] = gap
    scored["btyd_recency_over_gap"] = (summary["T"] - summary["t_x"]) / gap.where(gap > 0)
    return scored.fillna(NO_PURCHASE_YET).astype(float)


OFFLINE_TABLES = (*SNAPSHOT_TABLES, "member_consent", "member_realtime")
TIER_SINCE = "tier_since_ts"  # member_profile: when the tier was reached (unix s), carried to the next snapshot


HISTORY_TABLES = ("members", "transactions", "points_ledger", "engagement")  # split by member


@dataclass
class History:
    """The curated tables snapshots are computed from (a whole dataset's or one member partition's).

    Members are numbered: ``member_id`` in every table is the member's position in ``ids``
    (grouping by an integer is several times faster than by a string, at every snapshot), and
    the repeated text columns are categorical; :func:`snapshot` answers with the real ids."""

    members: pd.DataFrame  # indexed by member number
    orders: pd.DataFrame
    lines: pd.DataFrame
    ledger: pd.DataFrame
    engagement: pd.DataFrame
    ids: pd.Index  # member number -> member_id

    @classmethod
    def load(cls, settings: Settings) -> History:
        return cls.read(curated_files(settings))

    @classmethod
    def read(cls, files: dict[str, Path]) -> History:
        """From parquet files by table (``HISTORY_TABLES`` and ``items``)."""
        members = pd.read_parquet(files["members"])
        ids = pd.Index(members.pop("member_id"), name="member_id")
        members.index = pd.RangeIndex(len(ids), name="member_id")

        def numbered(df: pd.DataFrame, **categorical: pd.Series) -> pd.DataFrame:
            return df.assign(member_id=ids.get_indexer(df["member_id"]), **categorical)

        items = pd.read_parquet(files["items"], columns=["item_id", "category_l1"]).set_index("item_id")
        txn = numbered(pd.read_parquet(files["transactions"]))
        category = txn["item_id"].map(items["category_l1"]).fillna("UNKNOWN").astype("category")
        ledger, engagement = pd.read_parquet(files["points_ledger"]), pd.read_parquet(files["engagement"])
        # in time order (stable: a member's ledger keeps its order within a second), for _window
        return cls(
            members,
            _by_time(order_totals(txn)),
            _by_time(txn.assign(category_l1=category)),
            _by_time(numbered(ledger, kind=ledger["kind"].astype("category"))),
            _by_time(numbered(engagement, event=engagement["event"].astype("category"))),
            ids,
        )


def _by_time(events: pd.DataFrame) -> pd.DataFrame:
    return events.sort_values("ts", kind="stable", ignore_index=True)


def curated_files(settings: Settings) -> dict[str, Path]:
    return {table: settings.curated_dir / f"{table}.parquet" for table in (*HISTORY_TABLES, "items")}


def snapshot(
    history: History, t: pd.Timestamp, tier_prev: pd.Series, tier_since: pd.Series, btyd: BuyTillYouDie | None
) -> dict[str, pd.DataFrame]:
    """Every snapshot table at ``t`` (naive, UTC; rows stamped in UTC) from events strictly before it,
    for the members joined by then.
    ``tier_prev``/``tier_since``: each member's tier level at the previous snapshot and since when
    (updated in place: the tier's start carries from one snapshot to the next). ``btyd``: the
    programme's buy-till-you-die fit at ``t`` (:func:`fit_btyd`)."""
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
        "member_btyd": _btyd(history.orders, joined, t, btyd),
    }
    joined_ids, stamp = history.ids.take(joined), pd.Timestamp(t).tz_localize("UTC")
    return {name: df.set_axis(joined_ids).reset_index().assign(event_timestamp=stamp) for name, df in out.items()}


def build_partition(files: dict[str, Path], times: list[pd.Timestamp], fits: dict) -> dict[str, pd.DataFrame]:
    """Every snapshot table of one member partition at every time in ``times`` (oldest first,
    so a tier's start carries forward), with its consent and real-time seed rows. ``fits``:
    the programme's :func:`fit_btyd` by time. Reads only this partition's files."""
    history = History.read(files)
    index = history.members.index
    tier_prev = pd.Series(0, index=index)
    tier_since = pd.Series(pd.NaT, index=index, dtype="datetime64[ns]")
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in SNAPSHOT_TABLES}
    for t in times:
        for name, df in snapshot(history, t, tier_prev, tier_since, fits[t]).items():
            parts[name].append(df)
    return {name: pd.concat(dfs, ignore_index=True) for name, dfs in parts.items() if dfs} | _unversioned(history)


def build_feature_tables(settings: Settings, progress: bool = True, engine: str = "local") -> dict[str, int]:
    """Compute every snapshot table into ``settings.offline_dir``; returns row counts.

    Member partition by member partition (about ``feature_partition_members`` each): memory
    holds one partition's history and snapshots, whatever the programme's size. ``engine``:
    ``local`` builds them one after another in this process, ``dask`` on the cluster's workers
    (:func:`training.distributed.dask_client`; a remote cluster's workers must see
    ``data_dir`` at the same path). Each partition goes to disk as it arrives."""
    if engine not in ("local", "dask"):
        raise ValueError(f"engine must be 'local' or 'dask', not {engine!r}")
    meta = read_meta(settings)
    end = pd.Timestamp(meta["end"])
    files = curated_files(settings)
    with member_partitions(settings, files) as (partitions, scratch):
        start = min(_column_min(files["transactions"], "ts"), _column_min(files["members"], "join_date"))
        times = snapshot_times(start, end, settings.snapshot_every_days, anchor=dataset_cutoff(meta, settings))
        fits = _fit_btyd_sample(partitions, settings.feature_partition_members, times)
        with contextlib.ExitStack() as stack:
            writers = {name: stack.enter_context(OfflineTableWriter(settings, name)) for name in OFFLINE_TABLES}
            bar = tqdm(
                total=len(partitions), desc="feature partitions", unit="partition", disable=None if progress else True
            )
            for tables in _built(partitions, times, fits, settings, engine, scratch):
                for name, df in tables.items():
                    writers[name].write(df)
                bar.update()
            bar.close()
    return {name: w.rows for name, w in writers.items()}


@contextlib.contextmanager
def member_partitions(settings: Settings, files: dict[str, Path]) -> Iterator[tuple[list[dict], Path]]:
    """The curated history split by a hash of the member id into about
    ``feature_partition_members`` members each (one partition: the files themselves), as files
    by table per partition in a scratch directory beside the data, removed on exit; yields the
    partitions and the scratch directory."""
    n = partition_count(pq.ParquetFile(files["members"]).metadata.num_rows, settings.feature_partition_members)
    settings.dataset_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.dataset_dir, prefix=".partitions-") as tmp:
        scratch = Path(tmp)
        if n == 1:
            yield [files], scratch
            return
        split = {table: split_table(files[table], n, scratch) for table in HISTORY_TABLES}
        yield [{t: split[t][k] for t in HISTORY_TABLES} | {"items": files["items"]} for k in range(n)], scratch


def _built(
    partitions: list[dict], times: list, fits: dict, settings: Settings, engine: str, scratch: Path
) -> Iterator[dict]:
    """Each partition's tables as they are ready (in order locally, as finished on Dask, which
    writes them to ``scratch``)."""
    if engine == "local":
        for files in partitions:
            yield build_partition(files, times, fits)
        return
    from distributed import as_completed

    from training.distributed import dask_client

    with dask_client(settings) as client:
        shared = client.scatter({"times": times, "fits": fits}, broadcast=True)
        futures = [
            client.submit(_build_partition_files, files, shared["times"], shared["fits"], scratch / f"built-{k:05d}")
            for k, files in enumerate(partitions)
        ]
        for future in as_completed(futures):
            # parquet files, not pickled frames: the client reads one partition's tables at a time
            paths = future.result()
            yield {name: pd.read_parquet(path) for name, path in paths.items()}
            for path in paths.values():
                path.unlink()


def _build_partition_files(files: dict[str, Path], times: list, fits: dict, prefix: Path) -> dict[str, Path]:
    """:func:`build_partition` on a worker, each table written to ``prefix-<table>.parquet``."""
    paths = {}
    for name, df in build_partition(files, times, fits).items():
        paths[name] = prefix.with_name(f"{prefix.name}-{name}.parquet")
        df.to_parquet(paths[name], index=False)
    return paths


def _fit_btyd_sample(partitions: list[dict], partition_members: int, times: list[pd.Timestamp]) -> dict:
    """:func:`fit_btyd` at every time on the first partitions' orders, about
    ``BTYD_MAX_FIT_MEMBERS`` members (a hash sample: four parameters need no more)."""
    k = max(1, min(len(partitions), math.ceil(BTYD_MAX_FIT_MEMBERS / max(partition_members, 1))))
    columns = ["member_id", "order_id", "ts", "amount"]
    txn = pd.concat([pd.read_parquet(p["transactions"], columns=columns) for p in partitions[:k]], ignore_index=True)
    orders = _by_time(order_totals(txn.assign(member_id=pd.factorize(txn["member_id"])[0])))  # numbered: faster
    return {t: fit_btyd(orders, t) for t in times}


def _column_min(path: Path, column: str) -> pd.Timestamp:
    """A column's minimum from the parquet footer's statistics (a scan only where they are missing)."""
    meta = pq.ParquetFile(path).metadata
    idx = meta.schema.to_arrow_schema().get_field_index(column)
    stats = [meta.row_group(g).column(idx).statistics for g in range(meta.num_row_groups)]
    if stats and all(s is not None and s.has_min_max for s in stats):
        return pd.Timestamp(min(s.min for s in stats))
    return pd.Timestamp(pd.read_parquet(path, columns=[column])[column].min())


def append_snapshot(settings: Settings, t: pd.Timestamp) -> dict[str, int]:
    """Add the snapshot at ``t`` alone to the offline store (the daily cycle), member partition by
    member partition as the build computes them: memory holds one partition's history and the
    tables' rows one row group at a time, whatever the programme's size or the history's length.
    Each table is rewritten as its earlier rows (streamed, less any already stamped ``t``: a
    repeat is a no-op) followed by the new snapshot; the tier's start carries over from each
    member's latest earlier snapshot; BG/NBD is fitted at ``t`` on the build's member sample.
    Consent and the real-time seed (one row per member, no history) are rewritten."""
    t = pd.Timestamp(t)
    stamp = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    naive = stamp.tz_localize(None)
    carried = latest_tiers(settings.offline_dir / "member_profile.parquet", stamp)
    with member_partitions(settings, curated_files(settings)) as (partitions, _):
        fitted = _fit_btyd_sample(partitions, settings.feature_partition_members, [naive])[naive]
        with contextlib.ExitStack() as stack:
            writers = {name: stack.enter_context(OfflineTableWriter(settings, name)) for name in OFFLINE_TABLES}
            for name in SNAPSHOT_TABLES:
                _copy_earlier_rows(settings.offline_dir / f"{name}.parquet", stamp, writers[name])
            added = dict.fromkeys(OFFLINE_TABLES, 0)
            for part in partitions:
                history = History.read(part)
                last = carried.reindex(history.ids).set_axis(history.members.index)  # by member number
                tier_prev = last["tier_level"].fillna(0).astype("int64")
                tier_since = pd.to_datetime(last[TIER_SINCE], unit="s")
                tables = snapshot(history, naive, tier_prev, tier_since, fitted) | _unversioned(history)
                for name, df in tables.items():
                    writers[name].write(df)
                    added[name] += len(df)
    return added


def latest_tiers(profile: Path, stamp: pd.Timestamp) -> pd.DataFrame:
    """Each member's tier level and tier start at their latest snapshot before ``stamp``
    (indexed by member_id), aggregated by DuckDB over the parquet: one row per member in memory,
    not every snapshot."""
    query = f"""
        SELECT member_id, arg_max(tier_level, event_timestamp) AS tier_level,
               arg_max({TIER_SINCE}, event_timestamp) AS {TIER_SINCE}
        FROM read_parquet(?) WHERE event_timestamp < ? GROUP BY member_id"""
    with duckdb.connect() as con:
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        return con.execute(query, [str(profile), stamp.to_pydatetime()]).df().set_index("member_id")


def _copy_earlier_rows(path: Path, stamp: pd.Timestamp, writer: OfflineTableWriter) -> None:
    """The table's rows not stamped ``stamp``, a row group at a time, into ``writer``."""
    source = pq.ParquetFile(path)
    for g in range(source.num_row_groups):
        df = source.read_row_group(g).to_pandas()
        df = df[df[EVENT_TIMESTAMP] != stamp]
        if len(df):
            writer.write(df)


def _unversioned(history: History) -> dict[str, pd.DataFrame]:
    """Consent (each member's current flags) and the batch source behind the push source,
    seeded with each member's last purchase."""
    consent = history.members.set_axis(history.ids).reset_index()[
        ["member_id", "consent_personalisation", "consent_push", "consent_sms", "consent_email", "consent_updated_at"]
    ]
    consent = consent.rename(columns={"consent_updated_at": "event_timestamp"})
    consent["event_timestamp"] = pd.to_datetime(consent["event_timestamp"]).dt.tz_localize("UTC")
    last = history.orders.groupby("member_id")["ts"].max()
    realtime = pd.DataFrame(
        {
            "member_id": history.ids.take(last.index),
            "event_timestamp": pd.to_datetime(last.to_numpy()).tz_localize("UTC"),
            "rt_last_event_type": "purchase",
            "rt_last_event_ts": (last.astype("int64") // 10**9).to_numpy(),
            "rt_last_purchase_ts": (last.astype("int64") // 10**9).to_numpy(),
        }
    )
    return {"member_consent": consent, "member_realtime": realtime}
