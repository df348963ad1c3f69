"""The model store as readers see it: the profile's MLflow registry, aliases, champion loading.

Writing (registering, the promotion gate, the audit trail) belongs to ``training.registry``;
the decision service and batch scoring only read champions through here.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kernel.constants import CHAMPION, SERVED_JOBS
from kernel.settings import Settings

log = logging.getLogger("loyalty.models")


def use_tracking_store(settings: Settings) -> None:
    """Point MLflow's tracking and registry clients at the profile's store."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # MLflow's SQL store: a SQLAlchemy deprecation inside it, and INFO lines on every first open
    warnings.filterwarnings("ignore", message="The ``noload`` loader strategy", category=DeprecationWarning)
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        return None


def load_estimator(name: str, alias_or_version: str):
    """The estimator inside a registered pyfunc (``models.pyfunc.LoyaltyModel``), by alias or version."""
    ref = f"@{alias_or_version}" if not str(alias_or_version).isdigit() else f"/{alias_or_version}"
    return mlflow.pyfunc.load_model(f"models:/{name}{ref}").unwrap_python_model().estimator


# what the registry answers for a model never registered, or registered without a champion
NOT_REGISTERED = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


@dataclass
class Champions:
    """The loaded champion of each job, its version, and why a missing one is missing."""

    models: dict = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    untrained: set[str] = field(default_factory=set)  # never given a champion: served by the default policy


def champion_versions(settings: Settings, jobs: tuple[str, ...] = SERVED_JOBS) -> dict[str, int | None]:
    """Each job's current ``champion`` version (None: none registered); registry errors raise."""
    use_tracking_store(settings)
    client = MlflowClient()
    out: dict[str, int | None] = {}
    for job in jobs:
        try:
            out[job] = int(client.get_model_version_by_alias(settings.model_name(job), CHAMPION).version)
        except MlflowException as err:
            if err.error_code not in NOT_REGISTERED:
                raise
            out[job] = None
    return out


def load_champions(settings: Settings, jobs: tuple[str, ...] = SERVED_JOBS) -> Champions:
    """Every job's ``champion``; a missing one is recorded, never raised (its endpoint degrades)."""
    use_tracking_store(settings)
    client = MlflowClient()
    out = Champions()
    for job in jobs:
        name, version = settings.model_name(job), None
        try:
            version = int(client.get_model_version_by_alias(name, CHAMPION).version)
            out.models[job] = load_estimator(name, version)
            out.versions[job] = version
        except Exception as err:  # reported by /readyz and in answers
            if isinstance(err, MlflowException) and err.error_code in NOT_REGISTERED and version is None:
                # e.g. no campaigns, so no offer model: a state of the data, not a fault
                out.errors[job] = "no champion registered: answers use the default policy"
                out.untrained.add(job)
                continue
            out.errors[job] = f"{type(err).__name__}: {err}"
            log.warning("no champion for %s: %s", name, err)
    return out
