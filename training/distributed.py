"""Scale-out on Dask: distributed LightGBM training and distributed batch scoring.

Why Dask: Feast's file offline store already runs its point-in-time joins on Dask, and
LightGBM ships a Dask estimator (``lightgbm.DaskLGBMClassifier``, data-parallel training
over the workers' partitions) — one engine for both, plain Python workers, no JVM.

The distributed fit itself is :func:`models.dask_lgbm.fit_lgbm_classifier`.

``settings.dask_scheduler`` unset: a local cluster of ``settings.dask_workers`` processes.
Set (``tcp://scheduler:8786``): the same code runs on that cluster; its workers need this
package installed and read the feature store with the same settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from functools import partial

import numpy as np
import pandas as pd

from features.store import latest_features_table
from kernel.constants import CHAMPION
from kernel.curated import load_curated
from kernel.model_store import load_estimator
from kernel.settings import Settings
from training.datasets import context
from training.tracking import configure


@contextlib.contextmanager
def dask_client(settings: Settings) -> Iterator:
    """A ``distributed.Client`` for the configured cluster (a local one, torn down on exit)."""
    from distributed import Client, LocalCluster

    if settings.dask_scheduler:
        with Client(settings.dask_scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=settings.dask_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=settings.dask_worker_memory,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _apply(partition: pd.DataFrame, fn) -> pd.DataFrame:
    return fn(partition)


def score_partitions(client, frames: Iterable[pd.DataFrame], score_fn, n_partitions: int | None = None) -> pd.DataFrame:
    """``score_fn(partition) -> DataFrame`` on every partition of each frame, on the cluster's
    workers, in order; one frame at a time is shipped (the caller's slices of a larger table).

    ``score_fn`` (a model's scoring closure) is shipped to every worker once.
    """
    n = n_partitions or 4 * max(1, len(client.scheduler_info()["workers"]))
    fn = client.scatter(score_fn, broadcast=True, hash=False)
    scored = []
    for frame in frames:
        parts = [frame.iloc[idx] for idx in np.array_split(np.arange(len(frame)), n) if len(idx)]
        scored += client.gather(client.map(_apply, client.scatter(parts), fn=fn))
    return pd.concat(scored, ignore_index=True)


# members converted to pandas and scored at a time: the client holds the Arrow rows of every
# member and one slice's frame, SHAP matrix and answers, not every member's at once
SCORE_CHUNK_MEMBERS = 100_000


def churn_scores(
    settings: Settings,
    engine: str = "local",
    as_of: pd.Timestamp | None = None,
    drivers: bool = False,
    model=None,
) -> pd.DataFrame:
    """Churn risk of every member as of ``as_of`` (default: the dataset's end) with the champion,
    scored in process or on the Dask cluster. Features are read in bulk: every member's latest
    offline snapshot (:func:`features.store.latest_features_table`), scored
    :data:`SCORE_CHUNK_MEMBERS` at a time; members without one are scored on missing values, as
    the model was trained to. ``model``: a loaded churn estimator instead of the registry's
    champion (benchmarks)."""
    if engine not in ("local", "dask"):
        raise ValueError(f"engine must be 'local' or 'dask', not {engine!r}")
    ctx = context(settings)
    as_of = pd.Timestamp(as_of or ctx.end)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of
    members = load_curated(settings, "members", columns=["member_id", "join_date"])
    ids = members.loc[members["join_date"] <= as_of.tz_localize(None), "member_id"].to_numpy()
    table = latest_features_table(settings, ctx.store, "churn_v1", as_of, ids)
    if model is None:
        configure(settings)
        model = load_estimator(settings.model_name("churn"), CHAMPION)
    score = partial(_churn_partition, model, drivers)
    starts = range(0, max(table.num_rows, 1), SCORE_CHUNK_MEMBERS)
    slices = (table.slice(start, SCORE_CHUNK_MEMBERS).to_pandas() for start in starts)
    if engine == "local":
        return pd.concat([score(frame) for frame in slices], ignore_index=True)
    with dask_client(settings) as client:
        return score_partitions(client, slices, score)


def _churn_partition(model, drivers: bool, frame: pd.DataFrame) -> pd.DataFrame:
    scored = model.churn_list(frame, drivers=drivers)
    return scored.assign(member_id=frame["member_id"].to_numpy())[["member_id", *scored.columns]]
