"""Training jobs. Each module has ``run(settings, ...) -> JobResult``, the primary ``METRIC`` and
``MARGIN`` of its promotion gate, and ``score_holdout(estimator, holdout) -> float``."""

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

    def score_holdout(self, estimator, holdout) -> float:
        return self._mod.score_holdout(estimator, holdout)


JOBS = {name: JobSpec(name, f"training.jobs.{name}") for name in JOB_NAMES}
