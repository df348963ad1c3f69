"""Champion swaps as a pure function: only moved aliases reload, a broken candidate never
replaces a working model, a vanished alias keeps the last champion serving."""

from __future__ import annotations

import pandas as pd
import pytest

from kernel.model_store import Champions
from serving.champions import ServedModels, Watcher, swapped

pytestmark = pytest.mark.unit

OFFERS, CATEGORIES = pd.DataFrame(), pd.Series(dtype=object)


def _served(**versions) -> ServedModels:
    champions = Champions({j: f"{j}-v{v}" for j, v in versions.items()}, dict(versions), {}, set())
    return ServedModels.build(champions, OFFERS, CATEGORIES)


def test_only_moved_champions_are_loaded_and_swapped_in_whole():
    served, loads = _served(churn=1), []

    def load(job, version):
        loads.append((job, version))
        return f"{job}-v{version}"

    same, moved = swapped(served, {"churn": 1}, load, OFFERS, CATEGORIES)
    assert same is served and moved == [] and loads == []
    new, moved = swapped(served, {"churn": 2}, load, OFFERS, CATEGORIES)
    assert moved == ["churn"] and loads == [("churn", 2)]
    assert new.models == {"churn": "churn-v2"} and new.used("churn") == {"churn": 2}
    assert served.models == {"churn": "churn-v1"}  # the old bundle, held by requests in flight, is untouched


def test_a_first_champion_replaces_the_default_policy():
    served = ServedModels.build(Champions({}, {}, {"churn": "none"}, {"churn"}), OFFERS, CATEGORIES)
    new, moved = swapped(served, {"churn": 1}, lambda j, v: "m", OFFERS, CATEGORIES)
    assert moved == ["churn"] and not new.untrained and not new.errors


def test_a_broken_candidate_or_a_vanished_alias_keeps_the_working_champion():
    served = _served(churn=1)

    def broken(job, version):
        raise OSError("artifact missing")

    new, moved = swapped(served, {"churn": 2}, broken, OFFERS, CATEGORIES)
    assert new is served and moved == []
    new, moved = swapped(served, {"churn": None}, broken, OFFERS, CATEGORIES)
    assert new is served and moved == []


def test_the_watcher_survives_a_failing_refresh():
    import threading

    calls, done = [], threading.Event()

    def refresh():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("registry down")
        done.set()

    watcher = Watcher(refresh, 0.01).start()
    assert done.wait(5) and len(calls) >= 2
    watcher.stop()
