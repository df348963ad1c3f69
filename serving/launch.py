"""Start a server as a child process and wait until it answers: the decision service for the
demo, the tests and the benchmarks, ``mlflow ui`` for the browser test."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from kernel.settings import PROJECT_ROOT, Settings

SERVICE_NAME = "loyalty_decisions"  # the BentoML service's name (its configuration key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bentoml_overrides(env: Mapping[str, str]) -> str:
    """BentoML's configuration of the service's worker processes and threads per worker, from the
    ``LOYALTY_SERVING_WORKERS`` / ``LOYALTY_SERVING_THREADS`` settings in ``env``. BentoML reads it
    before any worker starts, so the service module itself reads no setting at import."""
    fields = Settings.model_fields
    workers = int(env.get("LOYALTY_SERVING_WORKERS", fields["serving_workers"].default))
    threads = int(env.get("LOYALTY_SERVING_THREADS", fields["serving_threads"].default))
    return json.dumps({"services": {SERVICE_NAME: {"workers": workers, "threads": threads}}})


def service_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a decision-service process: this one's, ``env`` on top, BentoML's
    configuration derived from them (unless the caller set ``BENTOML_CONFIG_OVERRIDES`` itself)."""
    out = {**os.environ, **(env or {})}
    out.setdefault("BENTOML_CONFIG_OVERRIDES", bentoml_overrides(out))
    return out


def service_cmd(port: int, host: str = "127.0.0.1") -> list[str]:
    """``bentoml serve`` of the decision service (settings come from the ``LOYALTY_*`` env, see
    :func:`service_env`)."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "serving.service:LoyaltyDecisionService",
        "--port",
        str(port),
        "--host",
        host,
    ]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (found before the first kill, since orphans
    are re-parented), and wait until they are gone."""
    import psutil

    root = psutil.Process(pid)
    victims = [*root.children(recursive=True), root]
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(victims, timeout=30)


class ServerProcess:
    """A child process serving HTTP on ``port``; output goes to ``log`` (appended)."""

    def __init__(self, cmd: list[str], port: int, log: Path, env: dict | None = None, ready_path: str = "/readyz"):
        self.cmd, self.port, self.log, self.ready_path = cmd, port, Path(log), ready_path
        self.cwd = PROJECT_ROOT
        self.env = {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    @classmethod
    def decision_service(cls, log: Path, env: dict | None = None, port: int | None = None) -> ServerProcess:
        port = port or free_port()
        return cls(service_cmd(port), port, log, service_env(env))

    def start(self, timeout: float = 180) -> ServerProcess:
        """Start and wait until ``ready_path`` answers 200; raise with the log's tail otherwise."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            # own session: a Ctrl-C meant for the caller does not reach the server
            self.proc = subprocess.Popen(
                self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[:4]} exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"not ready in {timeout:.0f}s: {self.tail()}")

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self, grace: float = 30) -> None:
        """Graceful stop (SIGTERM), SIGKILL after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the server and every process under it: a crash, no graceful shutdown.

        BentoML's workers start their own sessions, so killing the process group would leave
        them running (and answering on the inherited socket): walk the process tree instead."""
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
