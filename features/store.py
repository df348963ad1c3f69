"""Feature store for the active profile: config, apply, materialise, read.

The profile is configuration only: the same definitions run on the embedded default
(parquet offline store, SQLite online store, file registry) and on the production
profile (PostgreSQL offline store and SQL registry, Redis online store).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
import yaml
from feast import FeatureStore, FeatureView, RepoConfig
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import PostgreSQLOfflineStoreConfig
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from feast.infra.registry.sql import SqlRegistryConfig
from feast.repo_config import MaterializationConfig, RegistryConfig
from feast.utils import make_tzaware
from tqdm import tqdm

from features.on_demand import days_since_last_purchase_one
from features.online_sqlite import OrderedSqliteOnlineStore, OrderedSqliteOnlineStoreConfig
from features.repo import feast_objects
from features.repo_spec import SPEC_KEY, RepoSpec
from features.views import NO_TTL_VIEWS
from kernel.constants import EVENT_TIMESTAMP, MEMBER_ID, ONLINE_FEATURE_SERVICE
from kernel.curated import text_for_null
from kernel.settings import Profile, Settings

OFFLINE_ROW_GROUP = 64_000  # rows per parquet row group of the snapshot tables
# Materialisation writes only each member's latest row of the window (Feast's default reads
# every snapshot in it and writes them all, the older ones only to be overwritten) and converts
# it to the online store's protos in batches (Feast's default: the whole view at once, which
# grows with the programme).
MATERIALIZATION = MaterializationConfig(pull_latest_features=True, online_write_batch_size=50_000)


def repo_config(settings: Settings, serving: bool = False) -> RepoConfig:
    """``serving``: the decision service's client, which must fail fast (it degrades instead):
    no retries with backoff (redis-py's default takes ~3.5 s to give up on a dead server) and
    socket timeouts no longer than the service's own read timeout; and the SQL registry
    refreshed by Feast's background thread, never inside a request (so PostgreSQL being down
    neither delays nor fails a read: the last good copy stays in use)."""
    if settings.profile is Profile.production:
        registry = SqlRegistryConfig(
            path=settings.postgres_url,
            cache_ttl_seconds=60,
            cache_mode="thread" if serving else "sync",
            sqlalchemy_config_kwargs={"echo": False, "pool_pre_ping": True},
        )
        redis_url = settings.redis_url
        if serving and "retry=" not in redis_url:
            timeout = max(settings.feature_timeout_ms / 1000.0, 0.05)
            redis_url += f",retry=null,socket_connect_timeout={min(timeout, 0.25)},socket_timeout={timeout}"
        online = RedisOnlineStoreConfig(connection_string=redis_url)
        offline = postgres_offline_config(settings)
    else:
        # a local file: Feast re-reads it when its mtime changes, a stat per read
        registry = RegistryConfig(path=str(settings.registry_path), cache_ttl_seconds=60)
        # Feast's SQLite store, materialised in key order (features.online_sqlite)
        online = OrderedSqliteOnlineStoreConfig(path=str(settings.online_store_path))
        # DuckDB over the parquet snapshot tables: the point-in-time join runs in DuckDB, out of
        # core, not in pandas/Dask memory (what lets a million members train on one machine)
        offline = {"type": "duckdb"}
    return RepoConfig(
        project=f"{settings.feast_project}_{settings.dataset}",
        provider="local",
        registry=registry,
        online_store=online,
        offline_store=offline,
        entity_key_serialization_version=3,
        repo_path=settings.feature_repo_dir,
        materialization=MATERIALIZATION,
    )


def postgres_offline_config(settings: Settings) -> PostgreSQLOfflineStoreConfig:
    """Feast's PostgreSQL offline store, from the same SQLAlchemy URL as the other stores."""
    url = sa.make_url(settings.postgres_url)
    return PostgreSQLOfflineStoreConfig(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        database=url.database,
        db_schema="public",
        user=url.username or "postgres",
        password=url.password or "",
        sslmode=url.query.get("sslmode", "prefer"),
    )


class OfflineTableWriter:
    """One snapshot table written in parts (a member partition's snapshots each, in time order
    within a part), so a build never holds every snapshot:
    parquet (always, the exchange format) and, on the production profile, the PostgreSQL table
    its Feast source reads. The parquet file replaces the old one when the writer closes without
    an error; PostgreSQL's table is replaced in one transaction at the end."""

    def __init__(self, settings: Settings, name: str):
        self.settings, self.name = settings, name
        settings.offline_dir.mkdir(parents=True, exist_ok=True)
        self.path = settings.offline_dir / f"{name}.parquet"
        self._tmp = self.path.with_suffix(".parquet.partial")
        self._parquet: pq.ParquetWriter | None = None
        self._conn = None
        self.rows = 0

    def __enter__(self) -> OfflineTableWriter:
        if self.settings.profile is Profile.production:
            self._engine = sa.create_engine(self.settings.postgres_url)
            self._tx = self._engine.begin()
            self._conn = self._tx.__enter__()
        return self

    def write(self, df: pd.DataFrame) -> None:
        # in time order, in row groups of a bounded size: a read as of one time skips the others
        df = df.sort_values(EVENT_TIMESTAMP, kind="stable") if EVENT_TIMESTAMP in df else df
        # microseconds: DuckDB (the embedded offline store) cannot cast nanosecond zoned timestamps
        zoned = [c for c in df.columns if isinstance(df[c].dtype, pd.DatetimeTZDtype) and df[c].dtype.unit == "ns"]
        df = df.astype({c: pd.DatetimeTZDtype("us", df[c].dtype.tz) for c in zoned}) if zoned else df
        table = pa.Table.from_pandas(df, preserve_index=False)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._tmp, text_for_null(table.schema))
            if self._conn is not None:
                df.head(0).to_sql(self.settings.offline_table(self.name), self._conn, if_exists="replace", index=False)
        self._parquet.write_table(table.cast(self._parquet.schema), row_group_size=OFFLINE_ROW_GROUP)
        if self._conn is not None:
            raw = self._conn.connection.driver_connection  # psycopg 3: COPY is ~50x faster than INSERTs
            cols = ", ".join(f'"{c}"' for c in df.columns)
            with raw.cursor().copy(f'COPY "{self.settings.offline_table(self.name)}" ({cols}) FROM STDIN') as copy:
                for row in df.astype(object).where(df.notna(), None).itertuples(index=False, name=None):
                    copy.write_row(row)
        self.rows += len(df)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if exc_type is None and self._parquet is not None:
            self._tmp.replace(self.path)
        else:
            self._tmp.unlink(missing_ok=True)
        if self._conn is not None:
            if exc_type is None and self._parquet is not None:
                table = self.settings.offline_table(self.name)
                self._conn.exec_driver_sql(f'CREATE INDEX ON "{table}" (member_id, event_timestamp)')
            self._tx.__exit__(exc_type, exc, tb)
            self._engine.dispose()


def get_store(settings: Settings, serving: bool = False) -> FeatureStore:
    return FeatureStore(config=repo_config(settings, serving), repo_path=str(settings.feature_repo_dir))


def write_feature_store_yaml(settings: Settings) -> None:
    """Render feature_store.yaml for the ``feast`` CLI from the same settings, with the spec
    its definitions are built from (:mod:`features.definitions`)."""
    cfg = repo_config(settings)
    doc = {
        "project": cfg.project,
        "provider": "local",
        "registry": cfg.registry_config.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        | {"registry_type": cfg.registry_config.registry_type, "path": cfg.registry_config.path},
        "online_store": cfg.online_store.model_dump(mode="json", exclude_none=True),
        "offline_store": cfg.offline_store.model_dump(mode="json", exclude_none=True),
        "entity_key_serialization_version": 3,
        "materialization": cfg.materialization_config.model_dump(mode="json"),
        SPEC_KEY: RepoSpec.from_settings(settings).to_yaml_section(),
    }
    (settings.feature_repo_dir / "feature_store.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


@contextlib.contextmanager
def _quiet_feast() -> Iterator[None]:
    """Feast warns on every use of an on-demand view (ours is computed in process when serving)
    and prints coloured progress to stdout: neither belongs in our output."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", message="On demand feature view is an experimental", category=RuntimeWarning)
        yield


def apply(settings: Settings) -> FeatureStore:
    store = get_store(settings)
    with _quiet_feast():
        store.apply(feast_objects(RepoSpec.from_settings(settings)))
    write_feature_store_yaml(settings)
    return store


def materialize(settings: Settings, end: datetime) -> None:
    """Load the latest values as of ``end`` into the online store."""
    store = get_store(settings)
    recent = pd.Timestamp(end) - pd.Timedelta(days=2 * settings.snapshot_every_days)
    with _quiet_feast():
        _load(store, _snapshot_views(store), lambda fv: recent, end)
        _load_whole(store, end)


def materialize_incremental(settings: Settings, end: datetime) -> None:
    """The daily load: each snapshot view from where its last materialisation ended up to ``end``
    (Feast's ``materialize_incremental``: only the new snapshot is read). Consent and the
    real-time seed hold one row per member whose time can lie before the last load (a consent
    change exported a day late), so they are loaded whole, as they are small."""
    store = get_store(settings)
    with _quiet_feast():
        _load(store, _snapshot_views(store), lambda fv: fv.most_recent_end_time or pd.Timestamp(end) - fv.ttl, end)
        _load_whole(store, end)


def _snapshot_views(store: FeatureStore) -> list[FeatureView]:
    return [fv for fv in store.list_feature_views() if fv.name not in NO_TTL_VIEWS]


def _load_whole(store: FeatureStore, end: datetime) -> None:
    """Consent and the real-time seed: every row up to ``end``, whatever its time."""
    _load(store, [store.get_feature_view(name) for name in NO_TTL_VIEWS], lambda fv: datetime(1970, 1, 2), end)


def _load(
    store: FeatureStore, views: list[FeatureView], start: Callable[[FeatureView], datetime], end: datetime
) -> None:
    """Feast's materialisation loop, view by view: each member's newest row in the window goes
    to the online store, then the registry records the interval. Not ``FeatureStore.materialize``:
    Feast 0.66 first marks each view MATERIALIZING in the registry, and every reader that
    refreshes its registry meanwhile refuses the view ("cannot serve features"), so a running
    service would answer degraded for as long as the daily load runs. Here a view that serves
    keeps serving: each member's row is replaced in one write, old values until then.

    The embedded store is written in key order by :mod:`features.online_sqlite` from the
    offline store's read of the newest rows (the read Feast's own materialisation makes);
    other stores (Redis) through Feast's provider."""
    provider = store._get_provider()  # what FeatureStore.materialize itself calls
    online, config = provider.online_store, store.config
    end_tz = make_tzaware(pd.Timestamp(end).to_pydatetime())
    for fv in views:
        start_tz = make_tzaware(pd.Timestamp(start(fv)).to_pydatetime())
        if isinstance(online, OrderedSqliteOnlineStore) and online.writes_in_order(config, fv):
            source = fv.batch_source
            latest = provider.offline_store.pull_latest_from_table_or_query(
                config=config,
                data_source=source,
                join_key_columns=[e.name for e in fv.entity_columns],
                feature_name_columns=[f.name for f in fv.features],
                timestamp_field=source.timestamp_field,
                created_timestamp_column=source.created_timestamp_column or None,
                start_date=start_tz,
                end_date=end_tz,
            ).to_arrow()
            online.write_latest(config, fv, latest, MATERIALIZATION.online_write_batch_size)
        else:
            provider.materialize_single_feature_view(
                config=config,
                feature_view=fv,
                start_date=start_tz,
                end_date=end_tz,
                registry=store.registry,
                project=store.project,
                tqdm_builder=lambda total: tqdm(total=total, disable=True),
            )
        store.registry.apply_materialization(fv, store.project, start_tz, end_tz)


def online_features(
    store: FeatureStore, member_ids: list[str], request_ts: int, service: str = ONLINE_FEATURE_SERVICE
) -> pd.DataFrame:
    rows = [{MEMBER_ID: m, "request_ts": int(request_ts)} for m in member_ids]
    return store.get_online_features(features=store.get_feature_service(service), entity_rows=rows).to_df()


def serving_feature_refs(store: FeatureStore) -> list[str]:
    """``member_online_v1`` without its on-demand view: the materialised features the service reads.
    Resolving a feature service costs more than the read itself: callers on a request path
    resolve it once and pass the references."""
    fs = store.get_feature_service(ONLINE_FEATURE_SERVICE)
    return [
        f"{p.name}:{f.name}" for p in fs.feature_view_projections if p.name != "request_recency" for f in p.features
    ]


def serving_rows(
    store: FeatureStore, member_ids: list[str], request_ts: int, refs: list[str] | None = None
) -> list[dict]:
    """``member_online_v1`` for the decision service, one plain dict per member (no pandas on the
    request path): the materialised views from the online store, and the request-time recency
    computed in process with the on-demand view's own rule (same values, without the cost of
    Feast's on-demand transformation). Unknown members come back with ``None`` values."""
    data = store.get_online_features(
        features=refs or serving_feature_refs(store), entity_rows=[{MEMBER_ID: m} for m in member_ids]
    ).to_dict()
    rows = [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]
    for row in rows:
        row["request_ts"] = int(request_ts)
        row["days_since_last_purchase"] = days_since_last_purchase_one(
            row.get("last_purchase_ts"), row.get("rt_last_purchase_ts"), request_ts
        )
    return rows


def service_views(store: FeatureStore, service: str) -> list[tuple[str, list[str], timedelta]]:
    """(view, features, ttl) of each materialised view in a feature service, from Feast's registry."""
    fs = store.get_feature_service(service)
    out = []
    for p in fs.feature_view_projections:
        if p.name == "request_recency":
            continue
        out.append((p.name, [f.name for f in p.features], store.get_feature_view(p.name).ttl or timedelta(0)))
    return out


def read_latest(
    offline_dir: Path,
    views: list[tuple[str, list[str], timedelta]],
    as_of: pd.Timestamp,
    member_ids: list[str] | np.ndarray | None = None,
) -> pd.DataFrame:
    """:func:`read_latest_table` as a pandas frame."""
    return read_latest_table(offline_dir, views, as_of, member_ids).to_pandas()


def read_latest_table(
    offline_dir: Path,
    views: list[tuple[str, list[str], timedelta]],
    as_of: pd.Timestamp,
    member_ids: list[str] | np.ndarray | None = None,
) -> pa.Table:
    """Each member's latest snapshot row at ``as_of`` from each view's offline table, in bulk.

    Feast's point-in-time join costs far more than
    scoring when every member is asked about one time: then it reduces to "the newest row per
    member in [as_of - ttl, as_of]", a filtered columnar read (row groups outside the window
    are skipped: the tables are written in time order) and a hashed lookup. The views, their
    features and TTLs come from Feast's registry; the rows from the parquet snapshot tables
    that ``training.featurize`` writes on both profiles (the exchange copy of the PostgreSQL
    tables). Values are what :func:`training_frame` returns for the same members at ``as_of``.

    One row per ``member_ids`` (in order; nulls where a view has no row in range), or per
    member seen in any view when ``member_ids`` is None.
    """
    as_of = pd.Timestamp(as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    stamp = pa.scalar(as_of.to_pydatetime(), type=pa.timestamp("us", tz="UTC"))

    def window(ttl: timedelta) -> pc.Expression:
        where = pc.field(EVENT_TIMESTAMP) <= stamp
        if ttl:
            where &= pc.field(EVENT_TIMESTAMP) >= pa.scalar((as_of - ttl).to_pydatetime(), type=stamp.type)
        return where

    def in_range(
        view: tuple[str, list[str], timedelta], where: pc.Expression | None = None
    ) -> tuple[pa.Table, pa.Array]:
        """The view's rows in [as_of - ttl, as_of] (or those ``where`` keeps) and their order, newest first."""
        name, features, ttl = view
        table = pq.read_table(
            offline_dir / f"{name}.parquet",
            columns=[MEMBER_ID, EVENT_TIMESTAMP, *features],
            filters=window(ttl) if where is None else where,
        )
        return table, pc.sort_indices(table, sort_keys=[(EVENT_TIMESTAMP, "descending")])

    def aligned(found: tuple[pa.Table, pa.Array], ids: pa.Array) -> pa.Table:
        table, order = found
        # index_in finds the first match; in newest-first order that is each member's latest row
        newest = pc.index_in(ids, value_set=table.column(MEMBER_ID).take(order))
        return table.drop_columns([MEMBER_ID, EVENT_TIMESTAMP]).take(order.take(newest))

    def newest_first(view: tuple[str, list[str], timedelta]) -> pa.Table:
        """The rows of ``ids`` from the newest snapshot in range, then, for the members it lacks,
        from the rest of the window in one read: a member is in the newest snapshot as a rule,
        so the window is read and hashed about once, not once per snapshot. Same rows as the
        whole window's :func:`aligned`: the newest in range, the first in file order within one snapshot."""
        name, features, ttl = view
        path = offline_dir / f"{name}.parquet"
        stamps = pq.read_table(path, columns=[EVENT_TIMESTAMP], filters=window(ttl)).column(EVENT_TIMESTAMP)
        if not len(stamps):  # nothing in range: the view's columns, all null
            return aligned(in_range(view), ids)
        newest = pc.max(stamps)
        snap = pq.read_table(path, columns=[MEMBER_ID, *features], filters=pc.field(EVENT_TIMESTAMP) == newest)
        pos = pc.index_in(ids, value_set=snap.column(MEMBER_ID))
        first = snap.drop_columns([MEMBER_ID]).take(pos)  # nulls for the members it lacks
        missing = np.flatnonzero(pos.is_null().to_numpy(zero_copy_only=False))
        if not len(missing):
            return first
        older = aligned(in_range(view, window(ttl) & (pc.field(EVENT_TIMESTAMP) < newest)), ids.take(missing))
        index = np.arange(len(ids))
        index[missing] = len(ids) + np.arange(len(missing))  # their rows from the older read
        return pa.concat_tables([first, older]).take(index)

    # Arrow's kernels release the GIL: the views are read and aligned side by side
    with ThreadPoolExecutor(max_workers=min(len(views), 4) or 1) as pool:
        if member_ids is None:
            latest = list(pool.map(in_range, views))
            ids = pc.unique(pa.chunked_array([t.column(MEMBER_ID) for t, _ in latest], type=pa.string()))
            parts = list(pool.map(aligned, latest, [ids] * len(latest)))
        else:
            ids = pa.array(np.asarray(member_ids, dtype=object), type=pa.string())
            parts = list(pool.map(newest_first, views))
    columns, names = [ids], [MEMBER_ID]
    for rows in parts:
        columns += rows.columns
        names += rows.column_names
    return pa.table(columns, names=names)


def latest_features(
    settings: Settings, store: FeatureStore, service: str, as_of: pd.Timestamp, member_ids=None
) -> pd.DataFrame:
    """:func:`latest_features_table` as a pandas frame."""
    return latest_features_table(settings, store, service, as_of, member_ids).to_pandas()


def latest_features_table(
    settings: Settings, store: FeatureStore, service: str, as_of: pd.Timestamp, member_ids=None
) -> pa.Table:
    """:func:`read_latest_table` for a feature service of the active dataset (Arrow: a few
    times smaller than the frame, for callers that convert it a slice at a time)."""
    return read_latest_table(settings.offline_dir, service_views(store, service), as_of, member_ids)


def training_frame(store: FeatureStore, entity_df: pd.DataFrame, service: str | list[str]) -> pd.DataFrame:
    """Point-in-time correct features for ``entity_df`` (member_id, event_timestamp, labels...).

    Every entity row comes back, in order, with nulls where no snapshot is in range: an
    offline store may drop rows whose only candidate snapshots fall outside the TTL window or
    after the timestamp (Feast's file store did), so rows are re-attached by a row id. ``service`` is a
    feature service name or a list of ``view:feature`` references.
    """
    keyed = entity_df.reset_index(drop=True).assign(_row=lambda d: range(len(d)))
    features = store.get_feature_service(service) if isinstance(service, str) else service
    with _quiet_feast():
        feats = store.get_historical_features(entity_df=keyed, features=features).to_df()
    feats = feats.drop(columns=[c for c in entity_df.columns if c != "_row"]).drop_duplicates("_row")
    return keyed.merge(feats, on="_row", how="left").drop(columns="_row")
