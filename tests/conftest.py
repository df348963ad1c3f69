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
import threading
import time
from pathlib import Path

import httpx
import pytest

from kernel.constants import JOB_NAMES
from kernel.settings import Profile, Settings
from serving.launch import ServerProcess, free_port, service_cmd, service_env

KEY = "test-key"  # the API key of the services tests start
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


class Service(ServerProcess):
    """``bentoml serve`` in a subprocess on the test store; logs go to a file the tests can read."""

    def __init__(self, settings, log: Path, **env):
        port = free_port()
        env = {
            "LOYALTY_DATA_DIR": str(settings.data_dir),
            "LOYALTY_API_KEYS": KEY,
            "LOYALTY_PSEUDONYM_KEY": "test-pseudonym-key",
            # a loaded CI machine must not turn ordinary reads into degraded answers
            "LOYALTY_FEATURE_TIMEOUT_MS": "5000",
            **env,
        }
        super().__init__(service_cmd(port), port, log, service_env(env))

    def start(self, ready_path: str = "/readyz", timeout: float = 180) -> Service:
        self.ready_path = ready_path
        super().start(timeout)
        return self

    def post(self, path: str, body: dict, key: str | None = KEY) -> httpx.Response:
        headers = {"X-API-Key": key} if key else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=30)


class Load:
    """Clients asking ``svc`` for next-best offers in a loop while the ``with`` block runs.

    Each answer is kept as ``(status, degraded, model_version, trace versions)``: a test asserts
    none failed or degraded while something changed under the service."""

    def __init__(self, svc: Service, member_ids: list[str], clients: int = 4):
        self.svc, self.ids, self.clients = svc, member_ids, clients
        self.answers: list[tuple[int, bool, int | None, dict | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ask, args=(k,)) for k in range(clients)]

    def _ask(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            try:
                res = self.svc.post("/next_best_offer", {"member_id": self.ids[i % len(self.ids)], "max_results": 2})
            except httpx.HTTPError as err:  # kept as a failure, not lost
                self.answers.append((0, True, None, {"error": str(err)}))
                continue
            body = res.json() if res.status_code == 200 else {}
            versions = body.get("trace", [{}])[0].get("versions") if body else None
            self.answers.append((res.status_code, body.get("degraded", True), body.get("model_version"), versions))
            i += self.clients

    def wait_for(self, version: int, timeout: float = 60) -> int:
        """Wait until an answer used model ``version``; return how many answers came before it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(a[2] == version for a in self.answers):
                return len(self.answers)
            time.sleep(0.2)
        raise AssertionError(f"no answer used version {version} within {timeout:.0f}s: {self.answers[-3:]}")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


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
    from training.world import simulated_world

    return simulated_world(settings, TEST_MEMBERS)


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
