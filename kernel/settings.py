"""One typed settings object for paths, URIs and the deployment profile.

Every value can be overridden with an environment variable prefixed ``LOYALTY_``
(e.g. ``LOYALTY_PROFILE=production``, ``LOYALTY_DATA_DIR=/srv/loyalty``). The environment is
read when a ``Settings()`` is made (by the CLI, the service's constructor, a test), never at
import; keyword arguments win over the environment.
"""

from __future__ import annotations

import getpass
import json
import os
from enum import StrEnum
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Profile(StrEnum):
    embedded = "embedded"  # one machine, no servers: parquet + SQLite
    production = "production"  # Redis online store; PostgreSQL offline store, registry, tracking, serving state


# settings that may come from a file named by LOYALTY_<NAME>_FILE (container secrets)
SECRET_FIELDS = ("api_keys", "pseudonym_key", "postgres_url", "redis_url")
DEMO_API_KEY, DEMO_PSEUDONYM_KEY = "demo-key", "change-me"  # the embedded default's, never production's
MIN_PSEUDONYM_KEY_BYTES = 32


class SecretFiles(PydanticBaseSettingsSource):
    """``LOYALTY_API_KEYS_FILE=/run/secrets/api_keys`` and the like: the value is the file's content."""

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, str]:
        out = {}
        for name in SECRET_FIELDS:
            var = f"LOYALTY_{name.upper()}_FILE"
            if path := os.environ.get(var):
                try:
                    out[name] = Path(path).read_text().strip()
                except OSError as err:
                    raise ValueError(f"{var}: cannot read {path} ({err.strerror})") from None
        return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # arguments, then secret files, then LOYALTY_* variables
        return init_settings, SecretFiles(settings_cls), env_settings, dotenv_settings, file_secret_settings

    profile: Profile = Profile.embedded
    data_dir: Path = Field(default=PROJECT_ROOT / ".loyalty")
    shared_data_dir: Path = Field(default=PROJECT_ROOT.parent / "shared" / "data")
    feature_repo_dir: Path = Field(default=PROJECT_ROOT / "features")
    feast_project: str = "loyalty"
    dataset: str = Field(default="simulated", pattern=r"^[a-z0-9_]+$")  # simulated | online_retail | ...

    redis_url: str = "127.0.0.1:6379"  # Feast's connection string: host:port[,password=...,ssl=true]
    postgres_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"  # SQLAlchemy URL

    # -- distributed training / scoring (Dask) --------------------------------
    dask_scheduler: str | None = None  # tcp://host:8786 of a running cluster; unset: a local cluster
    dask_workers: int = 2  # workers of the local cluster (one thread each)
    # each local worker's memory limit (Dask spills, pauses and restarts at fractions of it);
    # a remote cluster's workers take theirs from `dask worker --memory-limit`
    dask_worker_memory: str = Field("4GiB", pattern=r"^\d+(\.\d+)?\s*(B|kB|KiB|MB|MiB|GB|GiB|TB|TiB)$")

    snapshot_every_days: int = 28  # cadence of feature snapshots in the offline store
    # members per partition of the feature build: memory holds one partition's history, so it
    # bounds the build's memory whatever the programme's size (training.partitions)
    feature_partition_members: int = Field(25_000, ge=100)
    label_window_days: int = 90  # churn label: no purchase in the next N days; CLV horizon
    # days an exposure's response is counted; the offer job leaves out exposures whose window is still open
    response_window_days: int = Field(14, ge=1)
    seed: int = 7

    # -- training / registry -------------------------------------------------
    mlflow_artifact_root: str | None = None  # local path or s3://...; default <data_dir>/mlartifacts
    actor: str = Field(default_factory=lambda: os.environ.get("USER") or getpass.getuser())  # recorded on alias moves
    tuning_trials: int = 8  # optuna trials per tuned model, at most
    # wall-clock budget of all CF tuning in one run (split between the algorithms): trials stop
    # when it is spent, so tuning time does not grow with the programme's size
    cf_tuning_budget_s: float = Field(120.0, gt=0)
    # members whose rows train and evaluate a model, at most (a fixed hash sample of the rest):
    # 200,000 training members against 100,000 of one 1M world add 0.0001 to churn AUC and CLV
    # Spearman, inside a 100k holdout's bootstrap spread (bench/training_size_bench.py), so past
    # 100k training time and the model's size stop growing with the programme; scoring covers everyone
    training_max_members: int = Field(100_000, ge=1000)
    # CF chooses its algorithm, tunes it and learns the re-ranker on a hash sample of this many
    # members; only the chosen model is refitted on every member (it must know each one to serve
    # them), so CF's time grows with the programme by one fit, not by the whole selection
    cf_selection_members: int = Field(50_000, ge=1000)
    # the promotion gate's margin for every job, in its metric's units; unset: each job's own MARGIN.
    # Negative promotes a challenger unless it is worse by more than that (a retrain on fresher data)
    promotion_margin: float | None = None
    # the gate lets a challenger trail by this many bootstrap standard errors of the gap (a
    # non-inferiority test); unset: each job's own TOLERANCE_SE (the offer job's 1.645, others 0)
    promotion_tolerance_se: float | None = Field(None, ge=0)
    # daily drift report: a served feature or score whose PSI against the champion's training data
    # reaches this is flagged (0.1-0.25 is commonly read as a moderate shift, above 0.25 a major one)
    drift_psi_warning: float = Field(0.25, gt=0)

    # -- serving --------------------------------------------------------------
    api_keys: str = DEMO_API_KEY  # comma-separated; every endpoint but health needs one (X-API-Key header)
    pseudonym_key: str = DEMO_PSEUDONYM_KEY  # HMAC key for member ids in logs and serving state
    feature_timeout_ms: float = 250.0  # slower online reads are abandoned: degraded answer
    contact_caps_per_week: dict[str, int] = Field(default_factory=lambda: {"push": 2, "sms": 1, "email": 2, "app": 7})
    exploration_rate: float = 0.0  # epsilon-greedy share of decisions that explore (propensity logged)
    # share of personalised decisions held out as a control group (nothing sent, decision logged):
    # what the service sends is then measured, and learned from, against members it did not reach
    control_share: float = Field(0.0, ge=0.0, lt=1.0)
    margin_rate: float = 0.3  # gross margin on incremental revenue, before an offer's own margin impact
    # "dataset": requests without a timestamp are decided as of the dataset's end (the demo and
    # simulated worlds live in the past); production deployments set "wall"
    serving_clock: str = "dataset"
    serving_workers: int = 1  # BentoML worker processes (each holds the models and a store client)
    # requests one worker handles at once (BentoML runs sync APIs on this many threads; its
    # default of 1 queues every request behind a slow store read)
    serving_threads: int = 8
    # requests one worker admits at once, running or waiting for a thread; beyond it the worker
    # answers 503 with Retry-After at once rather than queueing until reads time out
    serving_queue_limit: int = Field(32, ge=1)
    max_body_bytes: int = Field(2_000_000, ge=1024)  # larger request bodies get 413
    # how often a running service asks the registry whether a champion alias moved (0: never);
    # a moved one is loaded beside the old and swapped in whole, no restart
    model_refresh_seconds: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _refuse_unsafe_production_secrets(self) -> Settings:
        """The demo's keys are fine on one laptop, never in production."""
        if self.profile is not Profile.production:
            return self
        keys = [k.strip() for k in self.api_keys.split(",")]
        if not any(keys) or any(k in ("", DEMO_API_KEY) for k in keys):
            raise ValueError(
                f"the production profile refuses LOYALTY_API_KEYS {self.api_keys!r} (empty or the demo key):"
                " set real keys, or LOYALTY_API_KEYS_FILE"
            )
        if self.pseudonym_key == DEMO_PSEUDONYM_KEY or len(self.pseudonym_key.encode()) < MIN_PSEUDONYM_KEY_BYTES:
            raise ValueError(
                "the production profile refuses LOYALTY_PSEUDONYM_KEY: the demo value or shorter than"
                f" {MIN_PSEUDONYM_KEY_BYTES} bytes; set a random key, or LOYALTY_PSEUDONYM_KEY_FILE"
            )
        return self

    # -- derived locations -------------------------------------------------
    @property
    def dataset_dir(self) -> Path:
        return self.data_dir / self.dataset

    @property
    def raw_dir(self) -> Path:
        """Data as produced by the simulator or an adapter, before validation."""
        return self.dataset_dir / "raw"

    @property
    def curated_dir(self) -> Path:
        """Rows that passed the data contracts."""
        return self.dataset_dir / "curated"

    @property
    def quarantine_dir(self) -> Path:
        """Rows that failed a contract, with the reason."""
        return self.dataset_dir / "quarantine"

    @property
    def ground_truth_dir(self) -> Path:
        return self.dataset_dir / "ground_truth"

    @property
    def offline_dir(self) -> Path:
        """Feature snapshot tables read by the Feast file offline store."""
        return self.dataset_dir / "offline"

    @property
    def online_store_path(self) -> Path:
        return self.dataset_dir / "online_store.db"

    @property
    def registry_path(self) -> Path:
        return self.dataset_dir / "registry.db"

    @property
    def holdout_dir(self) -> Path:
        """Evaluation frames the promotion gate re-scores models on (kept out of MLflow: member ids)."""
        return self.dataset_dir / "holdouts"

    @property
    def serving_db(self) -> Path:
        """Durable serving state: decisions, feedback, contacts (SQLite, WAL, fsync per event)."""
        return self.dataset_dir / "serving.db"

    @property
    def serving_state_url(self) -> str:
        """SQLAlchemy URL of the serving state (shared by every replica in production)."""
        if self.profile is Profile.production:
            return self.postgres_url
        return f"sqlite:///{self.serving_db}"

    @property
    def serving_state_prefix(self) -> str:
        """Table prefix: one PostgreSQL database can hold several datasets' serving state."""
        return f"serving_{self.dataset}_" if self.profile is Profile.production else ""

    def offline_table(self, name: str) -> str:
        """PostgreSQL table of one snapshot table on the production profile."""
        return f"{self.dataset}_{name}"

    @property
    def artifact_root(self) -> str:
        return self.mlflow_artifact_root or str(self.data_dir / "mlartifacts")

    @property
    def experiment_name(self) -> str:
        return f"loyalty-{self.dataset}"

    def model_name(self, job: str) -> str:
        """Registered model name for one job on the active dataset."""
        return f"loyalty-{self.dataset}-{job}"

    @property
    def mlflow_tracking_uri(self) -> str:
        if self.profile is Profile.production:
            return self.postgres_url
        return f"sqlite:///{self.data_dir / 'mlflow.db'}"

    def to_env(self) -> dict[str, str]:
        """The ``LOYALTY_*`` variables that make a child process (the service) see these settings.
        A secret read from a ``*_FILE`` stays there: the child inherits the file's name, not its value."""
        return {
            f"LOYALTY_{name.upper()}": json.dumps(value) if isinstance(value, dict) else str(value)
            for name, value in self.model_dump(mode="json").items()
            if value is not None and not (name in SECRET_FIELDS and os.environ.get(f"LOYALTY_{name.upper()}_FILE"))
        }


def settings_error(err: ValueError) -> str:
    """One line for a settings problem: the setting it names and what to do."""
    errors = getattr(err, "errors", None)
    if not callable(errors):  # a plain ValueError (e.g. a secret file that cannot be read)
        return str(err)
    first = errors()[0]
    where = ".".join(map(str, first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    return f"setting {where}: {msg}" if where else msg
