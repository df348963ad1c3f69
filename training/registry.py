"""Model registry: register as ``challenger``, promote to ``champion`` through a gate, audit every move.

Aliases live in the MLflow model registry of the active profile. Every alias move (and every
refused promotion) is also written as a run in the ``loyalty-registry-audit`` experiment of the
same tracking store: who, what, when, both scores, the margin and the noise allowed, so the history of
production models is queryable in the MLflow UI and by :func:`history`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kernel.constants import CHALLENGER, CHAMPION
from kernel.model_store import alias_version, load_estimator, use_tracking_store
from kernel.settings import Settings
from training.evaluation.metrics import gap_standard_error
from training.tracking import configure, experiment_id

AUDIT_EXPERIMENT = "loyalty-registry-audit"


@dataclass
class Decision:
    model: str
    action: str  # bootstrapped | registered | promoted | refused
    version: str | None
    champion_version: str | None = None
    metric: str = ""
    challenger_score: float | None = None
    champion_score: float | None = None
    margin: float | None = None
    gap_se: float | None = None  # bootstrap standard error of challenger - champion on the holdout
    tolerance_se: float | None = None  # the challenger may trail by this many standard errors
    reason: str = ""
    actor: str = ""
    at: str = field(default_factory=lambda: pd.Timestamp.now(tz="UTC").isoformat())


# --------------------------------------------------------------------------- holdouts
def save_holdout(settings: Settings, job: str, frame: pd.DataFrame) -> str:
    """Store the evaluation frame the gate re-scores on; return its file name (content-addressed)."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]
    settings.holdout_dir.mkdir(parents=True, exist_ok=True)
    name = f"{job}-{digest}.parquet"
    path = settings.holdout_dir / name
    if not path.exists():
        frame.to_parquet(path, index=False)
    return name


def load_holdout(settings: Settings, name: str) -> pd.DataFrame:
    path = settings.holdout_dir / name
    if not path.exists():
        raise FileNotFoundError(f"holdout {path} missing: re-run the challenger's training job on this machine")
    return pd.read_parquet(path)


# --------------------------------------------------------------------------- aliases
def register(
    settings: Settings, job: str, model_uri: str, run_id: str, metric: str, score: float, holdout: str
) -> Decision:
    """New version -> ``challenger`` (or ``champion`` if the model has none). All or nothing."""
    client = MlflowClient()
    name = settings.model_name(job)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"{job} model for dataset {settings.dataset}")
    mv = None
    champion = alias_version(client, name, CHAMPION)
    alias = CHALLENGER if champion else CHAMPION
    previous = alias_version(client, name, alias)
    try:
        mv = client.create_model_version(
            name, model_uri, run_id=run_id, tags={"metric": metric, "score": f"{score:.6f}", "holdout": holdout}
        )
        _wait_ready(client, name, mv.version)
        client.set_registered_model_alias(name, alias, mv.version)
        decision = Decision(
            model=name,
            action="registered" if champion else "bootstrapped",
            version=mv.version,
            champion_version=champion or mv.version,
            metric=metric,
            challenger_score=score,
            reason=f"new version set as {alias}" + (f" (replaces challenger v{previous})" if previous else ""),
            actor=settings.actor,
        )
        audit(settings, decision)
        return decision
    except BaseException:  # interrupted or failed: leave the registry as it was
        if mv is not None:
            try:
                client.delete_model_version(name, mv.version)
                if previous:
                    client.set_registered_model_alias(name, alias, previous)
            except MlflowException:
                pass
        raise


def _wait_ready(client: MlflowClient, name: str, version: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get_model_version(name, version).status != "READY":
        if time.monotonic() > deadline:
            raise TimeoutError(f"model version {name} v{version} not READY after {timeout_s}s")
        time.sleep(0.2)


def promote(settings: Settings, job: str, margin: float | None = None, tolerance_se: float | None = None) -> Decision:
    """Promote the challenger unless it trails the champion on the challenger's holdout.

    Both models are re-scored on the same stored holdout with the job's primary metric, so
    the comparison does not depend on numbers logged at different times on different data.
    The challenger is promoted when ``challenger >= champion + margin - tolerance_se x SE``,
    SE being the bootstrap standard error of their gap (:func:`gap_standard_error`).
    ``margin`` defaults to the setting ``promotion_margin``, else the job's ``MARGIN``;
    ``tolerance_se`` to ``promotion_tolerance_se``, else the job's ``TOLERANCE_SE`` (0: no
    bootstrap, the scores alone decide).
    """
    from training.jobs import JOBS

    spec = JOBS[job]
    if margin is None:
        margin = spec.margin if settings.promotion_margin is None else settings.promotion_margin
    if tolerance_se is None:
        tolerance_se = spec.tolerance_se if settings.promotion_tolerance_se is None else settings.promotion_tolerance_se
    if tolerance_se < 0:
        raise ValueError(f"tolerance_se must be >= 0 (standard errors), not {tolerance_se}")
    configure(settings)
    client = MlflowClient()
    name = settings.model_name(job)
    challenger = alias_version(client, name, CHALLENGER)
    champion = alias_version(client, name, CHAMPION)
    base = Decision(model=name, action="refused", version=challenger, champion_version=champion, metric=spec.metric)
    base.margin, base.tolerance_se, base.actor = margin, tolerance_se, settings.actor
    if challenger is None:
        base.reason = "no challenger registered"
        return base  # nothing moved, nothing to audit
    holdout_name = client.get_model_version(name, challenger).tags.get("holdout", "")
    holdout = load_holdout(settings, holdout_name)
    new = load_estimator(name, challenger)
    base.challenger_score = float(spec.score_holdout(new, holdout))
    if champion is None:
        base.action, base.reason = "promoted", "no champion yet"
    else:
        old = load_estimator(name, champion)
        base.champion_score = float(spec.score_holdout(old, holdout))
        if tolerance_se > 0:
            members = holdout["member_id"].to_numpy() if "member_id" in holdout else np.arange(len(holdout))
            scorers = spec.holdout_scorer(new, holdout), spec.holdout_scorer(old, holdout)
            base.gap_se = gap_standard_error(*scorers, members, seed=settings.seed)
        promoted, base.reason = gate(
            spec.metric, base.challenger_score, base.champion_score, margin, base.gap_se or 0.0, tolerance_se
        )
        base.action = "promoted" if promoted else "refused"
    if base.action == "promoted":
        client.set_registered_model_alias(name, CHAMPION, challenger)
        client.delete_registered_model_alias(name, CHALLENGER)
        client.set_model_version_tag(name, challenger, "promoted_at", base.at)
        client.set_model_version_tag(name, challenger, "promoted_by", settings.actor)
        if champion:
            client.set_model_version_tag(name, champion, "retired_at", base.at)
    audit(settings, base)
    return base


def gate(
    metric: str, challenger: float, champion: float, margin: float, gap_se: float, tolerance_se: float
) -> tuple[bool, str]:
    """(promote?, reason): the challenger must reach ``champion + margin - tolerance_se x gap_se``.

    A tolerance makes it a non-inferiority test: a challenger trained on fresher data replaces
    the champion unless the holdout shows it worse beyond its own noise."""
    bar = champion + margin - tolerance_se * gap_se
    noise = f" - {tolerance_se:g} x SE {gap_se:.4f}" if tolerance_se > 0 else ""
    if challenger >= bar:
        return True, f"{metric} {challenger:.4f} >= champion {champion:.4f} + {margin}{noise}"
    return False, f"{metric} {challenger:.4f} < champion {champion:.4f} + margin {margin}{noise}"


def audit(settings: Settings, decision: Decision) -> None:
    """Append one record to the audit experiment (a run with params, metrics and tags)."""
    client = MlflowClient()
    exp_id = experiment_id(settings, AUDIT_EXPERIMENT)  # its artifacts under the artifact root, not ./mlruns
    record = asdict(decision)
    run = client.create_run(exp_id, run_name=f"{decision.action} {decision.model} v{decision.version}")
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in record.items() if isinstance(v, float)]
    params = [Param(k, str(v)) for k, v in record.items() if v is not None and not isinstance(v, float)]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)  # one write, not one per field
    client.set_tag(run.info.run_id, "audit_model", decision.model)
    client.set_terminated(run.info.run_id)


def history(settings: Settings, job: str | None = None) -> pd.DataFrame:
    """Every alias move and refused promotion, oldest first (reads only: creates no experiment)."""
    use_tracking_store(settings)
    client = MlflowClient()
    exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if exp is None:
        return pd.DataFrame()
    filt = f"tags.audit_model = '{settings.model_name(job)}'" if job else ""
    runs = mlflow.search_runs([exp.experiment_id], filter_string=filt, order_by=["attributes.start_time ASC"])
    if runs.empty:
        return runs
    cols = {c: c.split(".", 1)[1] for c in runs.columns if c.startswith(("params.", "metrics."))}
    keep = ["at", "model", "action", "version", "champion_version", "metric", "challenger_score", "champion_score"]
    keep += ["margin", "gap_se", "tolerance_se", "actor", "reason"]
    out = runs[list(cols)].rename(columns=cols)
    return out[[c for c in keep if c in out.columns]].sort_values("at").reset_index(drop=True)
