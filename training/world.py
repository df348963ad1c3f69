"""A simulated programme made ready to decide on, in one call: what the tests, the benches and
a notebook need before anything else (the CLI's ``demo`` runs the same steps as commands)."""

from __future__ import annotations

from collections.abc import Iterable

from kernel.settings import Settings


def simulated_world(
    settings: Settings,
    members: int,
    jobs: Iterable[str] = (),
    online: bool = True,
    seed: int | None = None,
    **config,
) -> dict:
    """Simulate ``members`` -> validate -> feature snapshots -> ``feast apply`` -> materialise
    to the dataset's end (unless ``online`` is false) -> train ``jobs`` (their first models
    become the champions). ``config``: other simulator settings (:class:`SimConfig` fields).

    Returns the feature store, the validation report, the snapshot counts, the dataset's end,
    its metadata and each job's result."""
    from features.store import apply, materialize
    from kernel.curated import dataset_end, read_meta
    from training.data.ingest import simulate_dataset
    from training.data.validation import validate_dataset
    from training.featurize import build_feature_tables
    from training.jobs import JOBS

    simulate_dataset(settings, members, seed=seed, progress=False, **config)
    report = validate_dataset(settings)
    counts = build_feature_tables(settings, progress=False)
    store = apply(settings)
    end = dataset_end(settings)
    if online:
        materialize(settings, end)
    trained = {job: JOBS[job].run(settings) for job in jobs}
    meta = read_meta(settings)
    return {"store": store, "report": report, "counts": counts, "end": end, "meta": meta, "trained": trained}
