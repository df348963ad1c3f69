"""Request limits in front of the service, on a stand-in ASGI app: shedding with Retry-After,
413 for oversized bodies (declared or streamed), health exempt, counters that go back down."""

from __future__ import annotations

import asyncio
import json

import pytest

from serving.limits import RequestLimits

pytestmark = pytest.mark.unit


class SlowApp:
    """Reads the whole body, then waits until released; answers 200 with the body's size."""

    def __init__(self):
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send):
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps({"size": size}).encode()})


async def _call(app, path="/next_best_offer", chunks=(b"{}",), headers=()):
    sent, queue = [], list(chunks)

    async def receive():
        body = queue.pop(0) if queue else b""
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST", "headers": list(headers)}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body)


def test_a_full_worker_sheds_with_503_and_retry_after_and_health_still_answers():
    async def scenario():
        inner = SlowApp()
        limits = RequestLimits(inner, max_in_flight=2, max_body_bytes=10_000)
        admitted = [asyncio.create_task(_call(limits)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert limits.in_flight == 2
        status, headers, body = await _call(limits)
        assert status == 503 and headers[b"retry-after"] == b"1"
        assert "LOYALTY_SERVING_QUEUE_LIMIT=2" in body["error"]
        health = asyncio.create_task(_call(limits, path="/readyz"))  # exempt: reaches the app
        await asyncio.sleep(0.01)
        assert not health.done() and limits.counts["shed"] == 1
        inner.release.set()
        assert [(await t)[0] for t in admitted] == [200, 200] and (await health)[0] == 200
        assert limits.in_flight == 0
        assert (await _call(limits))[0] == 200  # capacity is back

    asyncio.run(scenario())


def test_bodies_over_the_limit_get_413_whether_declared_or_streamed():
    async def scenario():
        inner = SlowApp()
        inner.release.set()
        limits = RequestLimits(inner, max_in_flight=4, max_body_bytes=1_000)
        declared = await _call(limits, chunks=(b"x" * 10,), headers=[(b"content-length", b"5000")])
        assert declared[0] == 413 and "LOYALTY_MAX_BODY_BYTES" in declared[2]["error"]
        streamed = await _call(limits, chunks=(b"x" * 600, b"x" * 600))  # chunked: no Content-Length
        assert streamed[0] == 413 and limits.counts["too_large"] == 2
        fine = await _call(limits, chunks=(b"x" * 600, b"x" * 300))
        assert fine[0] == 200 and fine[2] == {"size": 900}
        assert limits.in_flight == 0

    asyncio.run(scenario())


def test_an_answer_that_fails_its_own_schema_is_a_500_not_a_4xx():
    from bentoml.exceptions import InternalServerError

    from serving.schemas import Benefit
    from serving.service import own_answer

    def broken():
        return Benefit(offer_id="O1", kind="coupon", scene_dimension="need", value_dimension="material",
                       category=3.5, cost=1.0, score=0.0, reasons=[])  # fmt: skip

    with pytest.raises(InternalServerError, match=r"failed its schema.*category") as err:
        own_answer(broken)
    assert err.value.error_code == 500
    assert own_answer(lambda a, b: a + b, 1, 2) == 3
