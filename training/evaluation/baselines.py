"""The untuned baselines a churn or value model must beat (issue 14), shared by the jobs and the
benches so that a bench's baseline row is the job's: LightGBM with the library's defaults on the
model's own features, and buy-till-you-die fitted on the history before the cutoff."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from models.btyd import btyd_scores
from models.features import FeatureMatrix
from training.featurize import BTYD_MAX_FIT_MEMBERS

# untuned: the library's defaults; only quiet and on the two threads the jobs use
UNTUNED_LIGHTGBM = {"verbose": -1, "n_jobs": 2}


def untuned_lightgbm(
    features: FeatureMatrix,
    train: pd.DataFrame,
    target: np.ndarray,
    holdout: pd.DataFrame,
    seed: int,
    classifier: bool,
) -> np.ndarray:
    """LightGBM's defaults fitted on ``train`` through ``features`` (the tuned model's columns and
    category levels, so both read the same inputs): P(target = 1) on ``holdout`` for a
    ``classifier``, the predicted target otherwise."""
    M, M_holdout = features.transform(train), features.transform(holdout)
    if classifier:
        model = lgb.LGBMClassifier(**UNTUNED_LIGHTGBM, random_state=seed).fit(M, np.asarray(target))
        return model.predict_proba(M_holdout)[:, 1]
    return lgb.LGBMRegressor(**UNTUNED_LIGHTGBM, random_state=seed).fit(M, np.asarray(target)).predict(M_holdout)


def btyd_holdout(orders: pd.DataFrame, cutoff: pd.Timestamp, window_days: int, members) -> pd.DataFrame:
    """BG/NBD P(no purchase in the window) as ``p_no_purchase`` and BG/NBD x Gamma-Gamma spend in
    the window as ``expected_spend`` for each of ``members`` (in their order), fitted on the
    ``orders`` before ``cutoff`` only. A member without a purchase before the cutoff is one BG/NBD
    cannot score: certain not to buy (1.0) and worth nothing (0.0)."""
    scores = btyd_scores(orders, cutoff, window_days, BTYD_MAX_FIT_MEMBERS).reindex(pd.Index(members))
    return pd.DataFrame(
        {
            "p_no_purchase": scores["p_no_purchase"].fillna(1.0).to_numpy(),
            "expected_spend": scores["expected_spend"].fillna(0.0).to_numpy(),
        }
    )
