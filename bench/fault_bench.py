"""Load and faults on the production profile, over loopback, on private Redis and PostgreSQL
servers this script starts (so killing them never touches the machine's own services).

1. builds a production-profile world (simulate, snapshots into PostgreSQL, Feast SQL registry,
   materialise into Redis, train cf/churn/uplift into the PostgreSQL-backed MLflow);
2. starts the decision service and drives an open-loop mix of calls at a fixed rate:
   a steady window, then Redis is SIGKILLed and restarted, then PostgreSQL is;
3. SIGKILLs the service in the middle of a feedback stream, restarts it, and checks that
   every event the client sent is stored exactly once.

    python bench/fault_bench.py                       # prints a one-line SUMMARY
    python bench/fault_bench.py --json out.json --rate 15 --steady 60

Latency is measured from each request's scheduled time (no coordinated omission).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from serving.launch import ServerProcess, free_port, kill_tree

KEY = "fault-key"
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


# --------------------------------------------------------------------------- private servers
class _Daemon:
    """A server process: ``kill()`` is SIGKILL to it and its children (backends), like a crash."""

    def __init__(self, cmd: list[str], log: Path):
        self.cmd, self.log, self.proc = cmd, log, None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        kill_tree(self.proc.pid)
        self.proc.wait()


def _wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


class PrivateRedis(_Daemon):
    """redis-server with an append-only file fsynced on every write (the production setting
    for an online store that must come back with its data after a crash)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not installed")
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
        cmd += ["--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"]
        super().__init__(cmd, workdir / "redis.log")

    def start(self) -> None:
        super().start()
        _wait_port(self.port)


class PrivatePostgres(_Daemon):
    """A throwaway PostgreSQL cluster (initdb) on a free port; as root it runs as ``postgres``."""

    def __init__(self, workdir: Path):
        if not PG_BIN:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.port, self.data = free_port(), workdir / "pgdata"
        self.data.mkdir()
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if as_user:
            shutil.chown(self.data, "postgres")
            shutil.chown(workdir, "postgres")
        subprocess.run(
            [*as_user, str(PG_BIN[-1] / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True,
            capture_output=True,
        )
        cmd = [*as_user, str(PG_BIN[-1] / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        cmd += ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=200"]
        super().__init__(cmd, workdir / "postgres.log")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        super().start()
        _wait_port(self.port)
        # accepting connections (after crash recovery), not just listening
        import sqlalchemy as sa

        deadline = time.monotonic() + 60
        while True:
            try:
                engine = sa.create_engine(self.url)
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                engine.dispose()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


# --------------------------------------------------------------------------- world
def build_world(env: dict, members: int) -> None:
    steps = [
        ["data", "simulate", "--members", str(members)],
        ["data", "validate"],
        ["features", "build"],
        ["features", "apply"],
        ["features", "materialize"],
        ["train", "cf"],
        ["train", "churn"],
        ["train", "uplift"],
    ]
    for args in steps:
        proc = subprocess.run(
            [sys.executable, "-m", "cli", *args], env={**os.environ, **env}, capture_output=True, text=True
        )
        if proc.returncode:
            raise RuntimeError(f"loyalty-ml {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


# --------------------------------------------------------------------------- traffic
class Traffic:
    """Open-loop calls at ``rate``/s from a thread pool; every call is recorded."""

    def __init__(self, url: str, members: list[str], rate: float, seed: int = 7):
        self.url, self.members, self.rate = url, members, rate
        self.rng = np.random.default_rng(seed)
        self.client = httpx.Client(headers={"X-API-Key": KEY}, timeout=5.0)
        self.records: list[dict] = []
        self.events_sent: dict[str, int] = {}  # event_id -> attempts until acknowledged
        self._lock = threading.Lock()

    def _call(self, kind: str, member: str, scheduled: float, t0: float) -> None:
        paths = {
            "nbo_app": ("/next_best_offer", {"member_id": member}),
            "nbo_push": ("/next_best_offer", {"member_id": member, "channel": "push"}),
            "churn": ("/churn_risk", {"member_id": member}),
            "recs": ("/recommendations", {"member_id": member, "k": 5}),
        }
        rec = {"t": scheduled - t0, "kind": kind, "status": None, "degraded": None, "error": None}
        if kind == "feedback":
            rec.update(self._feedback(member))
        else:
            path, body = paths[kind]
            try:
                res = self.client.post(self.url + path, json=body)
                rec["status"] = res.status_code
                if res.status_code == 200:
                    rec["degraded"] = bool(res.json().get("degraded"))
            except httpx.HTTPError as err:
                rec["error"] = type(err).__name__
        rec["latency_ms"] = (time.monotonic() - scheduled) * 1000
        with self._lock:
            self.records.append(rec)

    def _feedback(self, member: str, deadline_s: float = 120) -> dict:
        """One impression event, resent (same id) on 503 or a connection error until acknowledged."""
        event = {"event_id": uuid.uuid4().hex, "member_id": member, "event": "impression", "channel": "app"}
        event["ts"] = 1_750_000_000
        attempts, last, end = 0, None, time.monotonic() + deadline_s
        while time.monotonic() < end:
            attempts += 1
            try:
                res = self.client.post(self.url + "/feedback", json={"events": [event]})
                last = res.status_code
                if res.status_code == 200:
                    with self._lock:
                        self.events_sent[event["event_id"]] = attempts
                    return {"status": 200, "attempts": attempts}
            except httpx.HTTPError as err:
                last = type(err).__name__
            time.sleep(0.5)
        with self._lock:
            self.events_sent[event["event_id"]] = -attempts  # never acknowledged
        return {"status": last, "attempts": attempts, "error": "not acknowledged"}

    def run(self, seconds: float, schedule: dict[float, callable] | None = None) -> None:
        """Send for ``seconds``; ``schedule`` maps a second to an action (a fault) run then."""
        kinds = ["nbo_app", "nbo_push", "churn", "recs", "feedback"]
        mix = [0.6, 0.1, 0.15, 0.1, 0.05]
        pending = sorted((schedule or {}).items())
        pool = ThreadPoolExecutor(max_workers=32)  # feedback retries hold a worker while a store is down
        t0 = time.monotonic()
        for i in range(int(seconds * self.rate)):
            at = t0 + i / self.rate
            while pending and pending[0][0] <= i / self.rate:
                threading.Thread(target=pending.pop(0)[1], daemon=True).start()
            time.sleep(max(0.0, at - time.monotonic()))
            kind = kinds[self.rng.choice(len(kinds), p=mix)]
            pool.submit(self._call, kind, self.members[self.rng.integers(len(self.members))], at, t0)
        pool.shutdown(wait=True)


def window(records: pd.DataFrame, lo: float, hi: float, rate: float) -> dict:
    w = records[(records["t"] >= lo) & (records["t"] < hi)]
    decisions = w[w["kind"] != "feedback"]
    nbo = w[w["kind"].str.startswith("nbo")]
    ok = decisions["status"] == 200
    return {
        "from_s": lo,
        "to_s": hi,
        "requests": int(len(w)),
        "rate_target": rate,
        "rate_sent": round(len(w) / (hi - lo), 2),
        "errors": int((~ok).sum()),
        "p50_ms": round(float(np.percentile(decisions["latency_ms"], 50)), 1) if len(decisions) else None,
        "p99_ms": round(float(np.percentile(decisions["latency_ms"], 99)), 1) if len(decisions) else None,
        # next-best-offer answers that fell back (churn risk needs no state, so it is not counted)
        "nbo_degraded_share": round(float(nbo.loc[nbo["status"] == 200, "degraded"].mean()), 3) if len(nbo) else None,
        "degraded_at_s": [round(float(x), 1) for x in nbo.loc[nbo["degraded"] == True, "t"].head(5)],  # noqa: E712
        "feedback_retried": int((w.loc[w["kind"] == "feedback"].get("attempts", pd.Series(dtype=float)) > 1).sum()),
    }


def recovery_s(records: pd.DataFrame, restarted_at: float) -> float | None:
    """Seconds from a server's restart to the first run of 10 healthy (200, not degraded) decisions."""
    after = records[(records["t"] >= restarted_at) & (records["kind"] != "feedback")].sort_values("t")
    healthy = ((after["status"] == 200) & (after["degraded"] == False)).to_numpy()  # noqa: E712
    for i in range(len(healthy) - 9):
        if healthy[i : i + 10].all():
            return round(float(after["t"].iloc[i] - restarted_at), 1)
    return None


def stored_event_ids(pg_url: str) -> pd.Series:
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        ids = conn.exec_driver_sql("SELECT event_id FROM serving_simulated_feedback").scalars().all()
    engine.dispose()
    return pd.Series(ids, dtype=object)


def restart_mid_feedback(svc: ServerProcess, url: str, members: list[str], seconds: float = 6) -> dict:
    """A feedback stream (batches of 5 events, resent on failure) while the service is SIGKILLed
    after 2 s and restarted; every event must end up acknowledged."""
    client = httpx.Client(headers={"X-API-Key": KEY}, timeout=5.0)
    sent: list[str] = []
    failures = 0
    killed = threading.Event()

    def crash_and_restart():
        time.sleep(2)
        svc.kill()
        killed.set()
        svc.start()

    threading.Thread(target=crash_and_restart, daemon=True).start()
    t0 = time.monotonic()
    rng = np.random.default_rng(11)
    while time.monotonic() - t0 < seconds or not killed.is_set():
        batch = [
            {"event_id": uuid.uuid4().hex, "member_id": str(m), "event": "click", "ts": 1_750_000_000}
            for m in rng.choice(members, 5)
        ]
        deadline = time.monotonic() + 240
        while True:  # the client's duty: resend until acknowledged (idempotent by event id)
            try:
                if client.post(url + "/feedback", json={"events": batch}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            failures += 1
            if time.monotonic() > deadline:
                raise TimeoutError("service did not come back within 240 s")
            time.sleep(0.5)
        sent += [e["event_id"] for e in batch]
    return {"events_sent": len(sent), "failed_attempts": failures, "ids": sent}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1500)
    ap.add_argument("--rate", type=float, default=15.0, help="requests per second, open loop")
    ap.add_argument("--steady", type=float, default=60.0, help="seconds of steady load before the faults")
    ap.add_argument("--outage", type=float, default=12.0, help="seconds each server stays down")
    ap.add_argument("--json", type=Path, help="write the full summary here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, data) for a post-mortem")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fault-bench-"))
    os.chmod(work, 0o755)
    redis, pg = PrivateRedis(work), PrivatePostgres(work)
    redis.start()
    pg.start()
    env = {
        "LOYALTY_PROFILE": "production",
        "LOYALTY_DATA_DIR": str(work / "data"),
        "LOYALTY_POSTGRES_URL": pg.url,
        "LOYALTY_REDIS_URL": f"127.0.0.1:{redis.port}",
        "LOYALTY_TUNING_TRIALS": "2",
        "LOYALTY_API_KEYS": KEY,
        "LOYALTY_PSEUDONYM_KEY": "fault-bench-pseudonym-key-of-32-bytes",
        "LOYALTY_FEATURE_TIMEOUT_MS": "1000",
    }
    svc = None
    try:
        t = time.monotonic()
        build_world(env, args.members)
        build_s = time.monotonic() - t
        members = pd.read_parquet(work / "data" / "simulated" / "curated" / "members.parquet")["member_id"].tolist()
        svc = ServerProcess.decision_service(work / "service.log", env).start()
        pid = svc.proc.pid
        traffic = Traffic(svc.url, members, args.rate)
        s, o = args.steady, args.outage
        faults = {"redis_killed": s, "redis_restarted": s + o, "pg_killed": s + o + 15, "pg_restarted": s + 2 * o + 15}
        schedule = {
            faults["redis_killed"]: redis.kill,
            faults["redis_restarted"]: redis.start,
            faults["pg_killed"]: pg.kill,
            faults["pg_restarted"]: pg.start,
        }
        total = faults["pg_restarted"] + 20
        traffic.run(total, schedule)
        rec = pd.DataFrame(traffic.records)
        grace = 2.0  # pooled connections notice a dead server on their next use
        summary = {
            "members": args.members,
            "build_world_s": round(build_s, 1),
            "steady": window(rec, 0, s, args.rate),
            "redis_down": window(rec, faults["redis_killed"] + grace, faults["redis_restarted"], args.rate),
            "redis_recovery_s": recovery_s(rec, faults["redis_restarted"]),
            "pg_down": window(rec, faults["pg_killed"] + grace, faults["pg_restarted"], args.rate),
            "pg_recovery_s": recovery_s(rec, faults["pg_restarted"]),
            "after": window(rec, faults["pg_restarted"] + 10, total, args.rate),
            "service_restarted_during_faults": svc.proc.pid != pid,
            "faults_at_s": faults,
        }
        fb = rec[rec["kind"] == "feedback"]
        crash = restart_mid_feedback(svc, svc.url, members)
        stored = stored_event_ids(pg.url)
        acked = [e for e, n in traffic.events_sent.items() if n > 0]
        summary["feedback_under_faults"] = {
            "events": len(traffic.events_sent),
            "acknowledged": len(acked),
            "needed_retries": int((fb["attempts"] > 1).sum()),
            "lost": len(set(acked) - set(stored)),
            "stored_twice": int(stored.duplicated().sum()),
        }
        summary["service_crash_mid_feedback"] = {
            "events_sent": crash["events_sent"],
            "failed_attempts_while_down": crash["failed_attempts"],
            "lost": len(set(crash["ids"]) - set(stored)),
            "stored_twice": int(stored[stored.isin(crash["ids"])].duplicated().sum()),
        }
    finally:
        if svc is not None:
            svc.stop()
        for d in (redis, pg):
            try:
                d.kill()
            except Exception:
                pass
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    st, rd, pd_, fu, cr = (
        summary["steady"],
        summary["redis_down"],
        summary["pg_down"],
        summary["feedback_under_faults"],
        summary["service_crash_mid_feedback"],
    )
    print(
        f"SUMMARY fault_bench: steady {st['rate_sent']:.1f} req/s for {args.steady:.0f} s, {st['errors']} errors, "
        f"p99 {st['p99_ms']:.0f} ms; Redis killed: {rd['errors']} errors, {rd['nbo_degraded_share']:.0%} degraded, "
        f"recovered in {summary['redis_recovery_s']} s; PostgreSQL killed: {pd_['errors']} errors, "
        f"{pd_['nbo_degraded_share']:.0%} degraded, recovered in {summary['pg_recovery_s']} s; no restart: "
        f"{not summary['service_restarted_during_faults']}; feedback lost {fu['lost']} of {fu['acknowledged']} "
        f"({fu['needed_retries']} retried); service SIGKILLed mid-feedback: lost {cr['lost']} of {cr['events_sent']}"
    )
    return summary


if __name__ == "__main__":
    main()
