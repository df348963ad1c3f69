"""MLflow setup and the run wrapper every training job uses: tags, fingerprints, model logging."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from kernel.model_store import use_tracking_store
from kernel.settings import PROJECT_ROOT, Settings
from models.pyfunc import LoyaltyModel


def configure(settings: Settings, experiment: str | None = None) -> str:
    """Point MLflow at the profile's tracking/registry store; create the experiment; return its id."""
    use_tracking_store(settings)
    name = experiment or settings.experiment_name
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        exp_id = client.create_experiment(name, artifact_location=f"{settings.artifact_root.rstrip('/')}/{name}")
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_sha() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dataset_fingerprint(settings: Settings) -> str:
    """SHA-256 over the curated tables and the dataset metadata (what the models were trained on)."""
    h = hashlib.sha256()
    for path in sorted(settings.curated_dir.glob("*.parquet")) + [settings.dataset_dir / "meta.json"]:
        h.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


@contextmanager
def job_run(
    settings: Settings, job: str, feature_service: str | None = None, feature_refs: list[str] | None = None, **tags
) -> Iterator[mlflow.ActiveRun]:
    """A top-level MLflow run with the tags every job carries. An exception marks it FAILED."""
    configure(settings)
    with mlflow.start_run(run_name=f"{job}") as run:
        mlflow.set_tags(
            {
                "job": job,
                "model_type": job,
                "dataset": settings.dataset,
                "profile": settings.profile.value,
                "git_sha": git_sha(),
                "dataset_fingerprint": dataset_fingerprint(settings),
                "feature_service": feature_service or "",
                **{k: str(v) for k, v in tags.items()},
            }
        )
        if feature_refs:
            mlflow.log_dict({"feature_service": feature_service, "features": feature_refs}, "features.json")
        yield run


def log_model(
    estimator, kind: str, input_example: pd.DataFrame, params: dict | None = None, metadata: dict | None = None
):
    """Log ``estimator`` as a pyfunc with signature and input example; return the ModelInfo."""
    wrapper = LoyaltyModel(estimator, kind, metadata)
    example = input_example.reset_index(drop=True)
    if "member_id" in example:  # artifacts never carry real member keys
        example["member_id"] = [f"example-{i}" for i in range(len(example))]
    output = wrapper.predict(None, example, params)
    signature = infer_signature(example, output, params=params)
    reqs = [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "lightgbm", "scikit-learn", "pandas", "numpy", "implicit")]
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=wrapper,
        signature=signature,
        input_example=example,
        # explicit: skips MLflow's slow requirement inference; the estimators' classes come from
        # this project's ``models`` package, installed wherever models are loaded (service, notebooks)
        pip_requirements=reqs,
        metadata={"kind": kind, **(metadata or {})},
    )


def log_figure(fig, path: str) -> None:
    """Log a matplotlib figure and free it (jobs draw many; pyplot keeps them otherwise)."""
    import matplotlib.pyplot as plt

    try:
        mlflow.log_figure(fig, path)
    finally:
        plt.close(fig)


def log_table(df: pd.DataFrame, name: str) -> None:
    """A small result table as JSON (shows in the MLflow UI's artifact viewer)."""
    mlflow.log_text(json.dumps(json.loads(df.to_json(orient="records")), indent=1), name)
