"""Load and faults on the production profile (``bench/fault_bench.py``, asserted): 60 s of
steady load with zero errors, Redis and PostgreSQL SIGKILLed and restarted under load with
degraded answers and recovery without a restart, the service SIGKILLed mid-feedback, and
no acknowledged feedback event lost anywhere."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATE = 15.0


def _missing() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        return "PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run a private PostgreSQL"
    return None


pytestmark = [
    pytest.mark.production,
    pytest.mark.skipif(_missing() is not None, reason=f"fault test needs private servers: {_missing()}"),
]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fault_bench.py"), "--rate", str(RATE), "--steady", "60"]
        + ["--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(proc.stdout.strip().splitlines()[-1])
    return json.loads(out.read_text())


def test_sustained_load_for_60_s_without_errors(faults):
    steady = faults["steady"]
    assert steady["errors"] == 0
    assert steady["rate_sent"] >= 0.95 * RATE and steady["requests"] >= 0.95 * RATE * 60
    assert steady["nbo_degraded_share"] <= 0.01
    assert steady["p99_ms"] < 2000  # reported in bench/RESULTS.md; bounded here for a loaded CI box


def test_redis_killed_mid_traffic_degrades_then_recovers_without_restart(faults):
    down = faults["redis_down"]
    assert down["errors"] == 0  # never a 5xx or a timeout: degraded answers instead
    assert down["nbo_degraded_share"] >= 0.9
    assert faults["redis_recovery_s"] is not None and faults["redis_recovery_s"] <= 15
    assert not faults["service_restarted_during_faults"]


def test_postgresql_killed_mid_traffic_degrades_then_recovers_without_restart(faults):
    down = faults["pg_down"]
    assert down["errors"] == 0
    assert down["nbo_degraded_share"] >= 0.9
    assert down["feedback_retried"] >= 1  # feedback answered 503 and was resent
    assert faults["pg_recovery_s"] is not None and faults["pg_recovery_s"] <= 15
    after = faults["after"]
    assert after["errors"] == 0 and after["nbo_degraded_share"] <= 0.01


def test_no_feedback_event_lost_under_store_faults_or_a_service_crash(faults):
    fb = faults["feedback_under_faults"]
    assert fb["acknowledged"] == fb["events"] > 0 and fb["lost"] == 0 and fb["stored_twice"] == 0
    crash = faults["service_crash_mid_feedback"]
    assert crash["failed_attempts_while_down"] > 0  # the crash really interrupted the stream
    assert crash["events_sent"] > 0 and crash["lost"] == 0 and crash["stored_twice"] == 0
