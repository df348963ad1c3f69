"""Shared fixtures: one small simulated dataset taken through the whole feature pipeline.

The data dir is set before any project module reads the settings, because the Feast
repo modules resolve their source paths from the settings when imported.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pandas as pd
import pytest

os.environ["LOYALTY_DATA_DIR"] = tempfile.mkdtemp(prefix="loyalty-test-")
os.environ["LOYALTY_DATASET"] = "simulated"
os.environ.pop("LOYALTY_PROFILE", None)
os.environ["LOYALTY_TUNING_TRIALS"] = "3"  # optuna trials per CF algorithm: enough to exercise tuning

from training.settings import Settings, get_settings  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TEST_MEMBERS = 4000  # large enough for the uplift-vs-propensity comparison to be stable


def run_cli(env: dict, *args: str, timeout: int = 600) -> str:
    """``loyalty-ml ARGS`` in a subprocess with ``env`` on top of this one's; must succeed."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, f"loyalty-ml {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def pipeline(settings: Settings):
    """Simulate -> validate -> build snapshots -> feast apply -> materialise (SQLite)."""
    from features.store import apply, materialize
    from training.data.ingest import read_meta, simulate_dataset, validate_dataset
    from training.featurize import build_feature_tables

    simulate_dataset(settings, TEST_MEMBERS, progress=False)
    report = validate_dataset(settings)
    counts = build_feature_tables(settings, progress=False)
    store = apply(settings)
    end = pd.Timestamp(read_meta(settings)["end"])
    materialize(settings, end)
    return {"store": store, "report": report, "counts": counts, "end": end, "meta": read_meta(settings)}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "online_retail").exists() or not (SHARED / "complete_journey").exists():
        pytest.skip(f"public data not found at {SHARED}: real-data adapter tests need ../shared/data")
    return SHARED


@pytest.fixture(scope="session")
def trained(settings, pipeline):
    """All five training jobs on the simulated pipeline; their models become the champions."""
    from training.jobs import JOBS

    return {name: JOBS[name].run(settings) for name in ("cf", "churn", "uplift", "clv", "fraud")}
