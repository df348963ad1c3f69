"""MLflow setup and the run wrapper every training job uses: tags, fingerprints, model logging."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version

import mlflow
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as context_registry

from kernel.model_store import use_tracking_store
from kernel.settings import PROJECT_ROOT, Settings
from models.pyfunc import LoyaltyModel

# MLflow 3's UI opens an experiment of this kind on its training runs, not on the GenAI overview
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(settings: Settings, name: str) -> str:
    """The experiment ``name`` (created with its artifacts under the profile's artifact root)."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get("mlflow.experimentKind") is None:
            client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return exp.experiment_id
    location = f"{settings.artifact_root.rstrip('/')}/{name}"
    return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def configure(settings: Settings, experiment: str | None = None) -> str:
    """Point MLflow at the profile's tracking/registry store; create the experiment; return its id."""
    use_tracking_store(settings)
    exp_id = experiment_id(settings, experiment or settings.experiment_name)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


SCHEMA_ROWS = 10_000  # rows a logged dataset's schema is inferred from


class FrameDataset(PandasDataset):
    """A training frame as an MLflow dataset: the schema inferred from its first rows, the row
    count and a digest of every row. MLflow's own ``from_pandas`` checks the type of every cell
    of the whole frame for its digest and schema: minutes for a million members' purchases."""

    def __init__(self, frame: pd.DataFrame, name: str, columns: list[str]):
        self._rows, self._elements = len(frame), len(frame) * len(columns)
        source = CodeDatasetSource(tags=context_registry.resolve_tags())
        head = frame.head(SCHEMA_ROWS)[columns]
        super().__init__(head, source=source, name=name, digest=frame_digest(frame, columns))

    @property
    def profile(self) -> dict:
        return {"num_rows": self._rows, "num_elements": self._elements}


def frame_digest(frame: pd.DataFrame, columns: list[str]) -> str:
    """Eight hex digits of a hash of the column names and every row's values, column by column."""
    md5 = hashlib.md5(",".join(map(str, columns)).encode())
    for col in columns:
        md5.update(pd.util.hash_pandas_object(frame[col], index=False).to_numpy().tobytes())
    return md5.hexdigest()[:8]


def log_datasets(frames: dict[str, pd.DataFrame], name: str) -> None:
    """Each frame as an MLflow dataset input (context = key): its schema, row count and digest
    fill the UI's Dataset column. MLflow keeps no rows, and member ids are left out of the digest."""
    for context, frame in frames.items():
        columns = [c for c in frame.columns if c != "member_id"]
        with _integer_columns_on_purpose():  # the schema is inferred when the input is logged
            mlflow.log_input(FrameDataset(frame, f"{name}-{context}", columns), context=context)


@contextmanager
def _integer_columns_on_purpose() -> Iterator[None]:
    """MLflow hints at every schema with integer columns; ours are typed on purpose (model_input)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        yield


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
    reqs = [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "lightgbm", "scikit-learn", "pandas", "numpy", "implicit")]
    # MLflow announces every pickled python_model and input-example check: known, not ours to act on
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with _integer_columns_on_purpose():
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=wrapper,
                signature=infer_signature(example, output, params=params),
                input_example=example,
                # explicit: skips MLflow's slow requirement inference; the estimators' classes come
                # from this project's ``models`` package, installed wherever models are loaded
                pip_requirements=reqs,
                metadata={"kind": kind, **(metadata or {})},
            )
    finally:
        pyfunc_log.setLevel(level)


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
