"""One MLflow pyfunc wrapper for every estimator, so any registered model loads the same way.

``mlflow.pyfunc.load_model(uri).predict(frame)`` returns a flat frame (nested values as JSON
strings, as a REST scorer would); the decision service calls
``.unwrap_python_model().estimator`` for the structured API.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import pandas as pd


def _predict_churn(est, df: pd.DataFrame, params: dict) -> pd.DataFrame:
    out = est.explain(df, top=int(params.get("top_drivers", 3)))
    return out.assign(top_drivers=out["top_drivers"].map(json.dumps))


def _predict_uplift(est, df: pd.DataFrame, params: dict) -> pd.DataFrame:
    return est.predict(df)


def _predict_cf(est, df: pd.DataFrame, params: dict) -> pd.DataFrame:
    out = est.recommend(
        df["member_id"].astype(str).tolist(),
        k=int(params.get("k", 10)),
        exclude_owned=bool(params.get("exclude_owned", True)),
    )
    return out.assign(item_ids=out["item_ids"].map(json.dumps), scores=out["scores"].map(json.dumps))


def _predict_clv(est, df: pd.DataFrame, params: dict) -> pd.DataFrame:
    return est.value(df)


def _predict_fraud(est, df: pd.DataFrame, params: dict) -> pd.DataFrame:
    return est.predict(df)


PREDICTORS = {
    "churn": _predict_churn,
    "uplift": _predict_uplift,
    "cf": _predict_cf,
    "clv": _predict_clv,
    "fraud": _predict_fraud,
}


class LoyaltyModel(mlflow.pyfunc.PythonModel):
    """``kind`` picks how a frame is scored; ``estimator`` is the fitted object from :mod:`models`."""

    def __init__(self, estimator, kind: str, metadata: dict | None = None):
        if kind not in PREDICTORS:
            raise ValueError(f"kind must be one of {sorted(PREDICTORS)}, not {kind!r}")
        self.estimator = estimator
        self.kind = kind
        self.metadata = metadata or {}

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return PREDICTORS[self.kind](self.estimator, frame.reset_index(drop=True), params or {})
