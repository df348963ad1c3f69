"""LightGBM trained data-parallel on a Dask cluster (``lightgbm.DaskLGBMClassifier``)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def fit_lgbm_classifier(
    client, X: pd.DataFrame, y: np.ndarray, params: dict, seed: int, sample_weight: np.ndarray | None = None
):
    """Data-parallel LightGBM over the cluster's workers; returns a local ``LGBMClassifier``
    (same predict API as single-process training), so nothing downstream changes."""
    import dask.dataframe as dd
    import lightgbm as lgb

    n_workers = max(1, len(client.scheduler_info()["workers"]))
    Xd = dd.from_pandas(X.reset_index(drop=True), npartitions=n_workers)
    yd = dd.from_pandas(pd.Series(np.asarray(y), name="y"), npartitions=n_workers)
    Xd, yd = client.persist([Xd, yd])
    wd = None
    if sample_weight is not None:
        wd = dd.from_pandas(pd.Series(np.asarray(sample_weight, float), name="w"), npartitions=n_workers)
        wd = client.persist(wd)
    model = lgb.DaskLGBMClassifier(client=client, random_state=seed, **params)
    model.fit(Xd, yd, sample_weight=wd)
    return model.to_local()
