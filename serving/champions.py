"""The champions a service answers with, as one immutable bundle: a request reads the bundle
once and uses it to the end, so a promotion swaps every model and what belongs to it (the
offer-pair encoder, the CF item categories) at once, and requests in flight finish on the old."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kernel.model_store import Champions
from models.uplift import PairEncoder

# swaps are rare operational events, logged at INFO even where the request path logs less
log = logging.getLogger("loyalty.serving.champions")


@dataclass(frozen=True)
class ServedModels:
    models: dict = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    untrained: frozenset[str] = frozenset()  # never given a champion: served by the default policy
    pair_encoder: PairEncoder | None = None  # uplift features x the served offer catalogue
    cf_item_category: np.ndarray | None = None  # category of each CF item, in the model's item order

    @classmethod
    def build(cls, champions: Champions, offers: pd.DataFrame, item_category: pd.Series) -> ServedModels:
        uplift, cf = champions.models.get("uplift"), champions.models.get("cf")
        return cls(
            models=dict(champions.models),
            versions=dict(champions.versions),
            errors=dict(champions.errors),
            untrained=frozenset(champions.untrained),
            pair_encoder=PairEncoder(uplift.features_, offers) if uplift is not None else None,
            cf_item_category=item_category.reindex(cf.items_).to_numpy() if cf is not None else None,
        )

    def as_champions(self) -> Champions:
        return Champions(dict(self.models), dict(self.versions), dict(self.errors), set(self.untrained))

    def used(self, *jobs: str) -> dict[str, int | None]:
        """The versions behind an answer (None: that job's default policy answered)."""
        return {job: self.versions.get(job) for job in jobs}


def swapped(
    served: ServedModels,
    current: dict[str, int | None],
    load: Callable[[str, int], object],
    offers: pd.DataFrame,
    item_category: pd.Series,
) -> tuple[ServedModels, list[str]]:
    """``served`` with every job whose champion moved to ``current`` loaded anew, and the jobs
    swapped. A new version that fails to load leaves the old one serving (logged); an alias that
    disappeared leaves the last champion serving: only a promotion replaces a model."""
    champions, moved = served.as_champions(), []
    for job, version in current.items():
        if version is None or version == served.versions.get(job):
            continue
        try:
            champions.models[job] = load(job, version)
        except Exception as err:  # a broken candidate must not take a working model down
            log.warning("champion %s v%s not swapped in: %s: %s", job, version, type(err).__name__, err)
            continue
        champions.versions[job] = version
        champions.errors.pop(job, None)
        champions.untrained.discard(job)
        moved.append(job)
    if not moved:
        return served, []
    for job in moved:
        log.info("champion %s now v%s (swapped in without restart)", job, champions.versions[job])
    return ServedModels.build(champions, offers, item_category), moved


class Watcher:
    """Calls ``refresh`` every ``interval`` seconds on a daemon thread until stopped; a failing
    call (registry unreachable) is logged and retried at the next tick."""

    def __init__(self, refresh: Callable[[], object], interval: float):
        self.refresh, self.interval = refresh, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)

    def start(self) -> Watcher:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.refresh()
            except Exception as err:
                log.warning(
                    "champion refresh failed (retried in %.0f s): %s: %s", self.interval, type(err).__name__, err
                )
