"""Explicit limits in front of the decision service: bounded admission and bounded bodies.

Beyond capacity a worker sheds at once (503 with ``Retry-After``) instead of queueing requests
until their feature reads time out and they are answered with degraded defaults; bodies over
the size setting are refused with 413 before they are read in full. Health and docs are exempt,
so probes keep answering while the service sheds.
"""

from __future__ import annotations

import json

EXEMPT_PATHS = ("/healthz", "/livez", "/readyz", "/metrics", "/", "/docs.json")
RETRY_AFTER_S = 1


class BodyTooLarge(Exception):
    """Raised inside ``receive`` once a streamed body passes the limit."""


class RequestLimits:
    """ASGI middleware: at most ``max_in_flight`` requests admitted per worker, bodies of at most
    ``max_body_bytes``. ``counts`` keeps what it refused (for tests and ``/metrics``-style checks)."""

    def __init__(self, app, max_in_flight: int | None = None, max_body_bytes: int | None = None):
        if max_in_flight is None or max_body_bytes is None:
            from kernel.settings import Settings  # read when BentoML builds the app, never at import

            settings = Settings()
            max_in_flight = settings.serving_queue_limit if max_in_flight is None else max_in_flight
            max_body_bytes = settings.max_body_bytes if max_body_bytes is None else max_body_bytes
        self.app = app
        self.max_in_flight = int(max_in_flight)
        self.max_body_bytes = int(max_body_bytes)
        self.in_flight = 0  # one event loop per worker: no lock needed
        self.counts = {"shed": 0, "too_large": 0}

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or path in EXEMPT_PATHS or path.startswith("/static_content"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._too_large(send)
        if self.in_flight >= self.max_in_flight:
            self.counts["shed"] += 1
            return await _send_json(
                send,
                503,
                {
                    "error": f"overloaded: {self.in_flight} requests in flight on this worker"
                    f" (LOYALTY_SERVING_QUEUE_LIMIT={self.max_in_flight}); retry after {RETRY_AFTER_S} s"
                },
                [(b"retry-after", str(RETRY_AFTER_S).encode())],
            )
        received = 0
        started = False

        async def bounded_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, bounded_receive, tracked_send)
        except BodyTooLarge:
            if not started:  # a body without Content-Length (chunked) that passed the limit
                await self._too_large(send)
        finally:
            self.in_flight -= 1

    async def _too_large(self, send) -> None:
        self.counts["too_large"] += 1
        body = {"error": f"request body over {self.max_body_bytes} bytes (LOYALTY_MAX_BODY_BYTES)"}
        await _send_json(send, 413, body)


async def _send_json(send, status: int, doc: dict, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
