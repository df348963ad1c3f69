"""Shared fixtures: one small simulated dataset taken through the whole feature pipeline.

Settings are made explicitly (a temporary data dir, the embedded profile) and handed to the
code under test; processes started by tests get them as ``LOYALTY_*`` variables.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from kernel.constants import JOB_NAMES
from kernel.settings import Profile, Settings

CHROMIUM = shutil.which("chromium")  # Debian's; `make test` installs it where it can
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",
    "--window-size=2400,3000",
]


def page_dom(url: str) -> str:
    """A page's DOM after Chromium has run its JavaScript."""
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout


def page_text(url: str) -> str:
    """A page as a person reads it: the rendered DOM as text."""
    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", page_dom(url), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TEST_MEMBERS = 4000  # large enough for the uplift-vs-propensity comparison to be stable


def run_cli_process(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``loyalty-ml ARGS`` in a subprocess with ``env`` on top of this one's, whatever its exit."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
    )


def run_cli(env: dict, *args: str, timeout: int = 600) -> str:
    """:func:`run_cli_process` that must succeed; its stdout."""
    proc = run_cli_process(env, *args, timeout=timeout)
    assert proc.returncode == 0, f"loyalty-ml {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    # 3 optuna trials per CF algorithm: enough to exercise tuning
    return Settings(
        data_dir=tmp_path_factory.mktemp("loyalty"), dataset="simulated", profile=Profile.embedded, tuning_trials=3
    )


def cli_args(settings: Settings, *args: str) -> list[str]:
    """``loyalty-ml`` arguments that select the test's data dir and dataset."""
    return ["--data-dir", str(settings.data_dir), "--dataset", settings.dataset, *args]


@pytest.fixture(scope="session")
def pipeline(settings: Settings):
    """Simulate -> validate -> build snapshots -> feast apply -> materialise (SQLite)."""
    from features.store import apply, materialize
    from kernel.curated import dataset_end, read_meta
    from training.data.ingest import simulate_dataset, validate_dataset
    from training.featurize import build_feature_tables

    simulate_dataset(settings, TEST_MEMBERS, progress=False)
    report = validate_dataset(settings)
    counts = build_feature_tables(settings, progress=False)
    store = apply(settings)
    end = dataset_end(settings)
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

    return {name: JOBS[name].run(settings) for name in JOB_NAMES}
