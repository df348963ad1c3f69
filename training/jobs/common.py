"""What every job does last: log the model, store the holdout, register (all or nothing)."""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd

from kernel.settings import Settings
from training.datasets import JobNotApplicable
from training.drift import DRIFT_REFERENCE, SCORE_PREFIX, reference_profile
from training.registry import Decision, register, save_holdout
from training.tracking import log_datasets, log_model

__all__ = ["JobNotApplicable", "JobResult", "finish", "log_metrics", "model_input"]


@dataclass
class JobResult:
    job: str
    run_id: str
    metrics: dict[str, float]
    comparison: pd.DataFrame = field(default_factory=pd.DataFrame)  # model vs baseline vs oracle
    decision: Decision | None = None
    notes: list[str] = field(default_factory=list)  # caveats the CLI prints next to the metrics
    model: object | None = None  # the fitted estimator (benches, notebooks: no registry round trip)


def finish(
    settings: Settings,
    job: str,
    estimator,
    kind: str,
    example: pd.DataFrame,
    metric: str,
    score: float,
    holdout: pd.DataFrame,
    register_model: bool = True,
    params: dict | None = None,
    train: pd.DataFrame | None = None,
    scores: dict[str, np.ndarray] | None = None,
) -> Decision | None:
    """Log the data as dataset inputs, the drift reference (the model's input columns in
    ``train``, and ``scores``: its outputs on the holdout), the pyfunc, and register it as
    challenger (or first champion). Call inside the job run."""
    log_datasets({"training": train, "holdout": holdout} if train is not None else {"holdout": holdout}, job)
    reference = {}
    if train is not None:
        reference = reference_profile(train, [c for c in example.columns if c != "member_id" and c in train.columns])
    for name, values in (scores or {}).items():
        reference[f"{SCORE_PREFIX}{name}"] = reference_profile(pd.DataFrame({name: values}))[name]
    if reference:
        mlflow.log_dict(reference, DRIFT_REFERENCE)
    holdout_name = save_holdout(settings, job, holdout)
    mlflow.set_tag("holdout", holdout_name)
    info = log_model(estimator, kind, example, params=params)
    if not register_model:
        return None
    decision = register(settings, job, info.model_uri, mlflow.active_run().info.run_id, metric, score, holdout_name)
    mlflow.set_tags({"registered_model": decision.model, "registered_version": decision.version})
    return decision


def model_input(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns a model reads (plus member_id), numerics as float so missing values fit the signature."""
    cols = list(dict.fromkeys(["member_id", *columns]))
    out = frame[cols].reset_index(drop=True).copy()
    for c in cols:
        if pd.api.types.is_numeric_dtype(out[c]) and not pd.api.types.is_bool_dtype(out[c]):
            out[c] = out[c].astype("float64")
    return out


def log_metrics(metrics: dict[str, float], prefix: str = "") -> None:
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in metrics.items() if pd.notna(v)})
