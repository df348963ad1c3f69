"""Training jobs. Each module has ``run(settings, ...) -> JobResult``, the primary ``METRIC`` and
``MARGIN`` of its promotion gate, and ``score_holdout(estimator, holdout) -> float``; one whose
holdout is small against its metric's noise also sets ``TOLERANCE_SE`` (see
:func:`training.registry.promote`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from kernel.constants import JOB_NAMES


@dataclass(frozen=True)
class JobSpec:
    name: str
    module: str

    @property
    def _mod(self):
        return import_module(self.module)

    @property
    def run(self) -> Callable:
        return self._mod.run

    @property
    def metric(self) -> str:
        return self._mod.METRIC

    @property
    def margin(self) -> float:
        return self._mod.MARGIN

    @property
    def tolerance_se(self) -> float:
        return getattr(self._mod, "TOLERANCE_SE", 0.0)

    def score_holdout(self, estimator, holdout) -> float:
        return self._mod.score_holdout(estimator, holdout)

    def holdout_scorer(self, estimator, holdout) -> Callable:
        """row positions -> ``score_holdout`` on those rows of ``holdout`` (the gate's bootstrap);
        a job may predict once for all resamples by defining its own ``holdout_scorer``."""
        own = getattr(self._mod, "holdout_scorer", None)
        if own is not None:
            return own(estimator, holdout)
        return lambda rows: self._mod.score_holdout(estimator, holdout.iloc[rows].reset_index(drop=True))


JOBS = {name: JobSpec(name, f"training.jobs.{name}") for name in JOB_NAMES}
