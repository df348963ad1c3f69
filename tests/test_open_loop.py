"""The open-loop generator counts what the benchmarks count: a degraded or shed answer is a failure."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.open_loop import run

pytestmark = pytest.mark.unit


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.loads(self.server.answers[self.path][1])
        status = self.server.answers[self.path][0]
        out = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.answers = {
        "/ok": (200, '{"degraded": false}'),
        "/degraded": (200, '{"degraded": true}'),
        "/batch": (200, '[{"degraded": false}, {"degraded": true}]'),
        "/shed": (503, '{"error": "busy"}'),
    }
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.mark.parametrize(
    "path, ok, degraded, outcome",
    [
        ("/ok", 20, 0, "ok"),
        ("/degraded", 0, 20, "degraded"),
        ("/batch", 0, 20, "degraded"),
        ("/shed", 0, 0, "http_503"),
    ],
)
def test_open_loop_counts_degraded_and_shed_answers_as_failures(server, path, ok, degraded, outcome):
    r = asyncio.run(run(server, path, rate=40, seconds=0.5, bodies=[{"member_id": "m"}], key="k"))
    assert r["requests"] == 20 and r["ok"] == ok and r["degraded"] == degraded
    assert r["errors"] == 20 - ok - degraded
    assert r["outcomes"] == {outcome: 20}
    assert r["p50_ms"] > 0 and r["generator_cpu_per_request_ms"] > 0


def test_open_loop_counts_refused_connections(server):
    r = asyncio.run(run("http://127.0.0.1:9", "/ok", rate=20, seconds=0.25, bodies=[{}], key=None))
    assert r["ok"] == 0 and r["errors"] == 5
