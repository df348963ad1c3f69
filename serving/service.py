"""BentoML decision service: thin typed endpoints over :class:`serving.runtime.DecisionRuntime`.

bentoml serve serving.service:LoyaltyDecisionService      # OpenAPI / Swagger UI at /
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import sys
from collections.abc import Callable

import anyio
import bentoml
from bentoml.exceptions import BentoMLException, InternalServerError, InvalidArgument, ServiceUnavailable
from pydantic import Field, ValidationError

from kernel import __version__
from kernel.settings import Settings, settings_error
from serving.launch import SERVICE_NAME
from serving.limits import RequestLimits
from serving.runtime import DecisionRuntime
from serving.schemas import (
    BenefitsResponse,
    Channel,
    ChurnRiskResponse,
    FeedbackAck,
    FeedbackEvent,
    Id,
    MemberId,
    MemberIdItem,
    Name,
    NextBestOfferResponse,
    RecommendationsResponse,
    Timestamp,
    UnixTime,
    json_int,
)
from serving.state import StateUnavailable

OPEN_PATHS = ("/healthz", "/livez", "/readyz")  # health needs no key (load balancers, k8s probes)
HEALTH_PATHS = ("/healthz", "/readyz")  # answered here as JSON, one entry per component
DOC_PATHS = ("/", "/docs.json", "/static_content")
MAX_BATCH_DECISIONS = 100  # next-best-offer decisions per batch call (each one is logged)
MAX_BATCH_MEMBERS = 500  # churn scores per batch call


def _error_object(body: bytes) -> bytes:
    """BentoML answers its own input errors as ``[{"error": ...}]``; clients get ``{"error": ...}``."""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return json.dumps({"error": body.decode(errors="replace")}).encode()
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], dict):
        doc = doc[0]
    detail = doc.get("detail") if isinstance(doc, dict) else None
    if isinstance(detail, list) and detail and all(isinstance(e, dict) for e in detail):
        # pydantic's headline ("1 validation error for Input") names no field: lead with the fields
        doc["error"] = "; ".join(f"{_field(e.get('loc'))}: {e.get('msg', 'invalid')}" for e in detail)
    return json.dumps(doc).encode()


def _field(loc) -> str:
    """``["events", 1, "ts"]`` -> ``events[1].ts``, the way the service's own messages name fields."""
    out = ""
    for part in loc or ():
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def own_answer(build, *args):
    """``build(*args)``; an answer that fails its own schema is the service's fault: a 500, not
    the 4xx BentoML gives every pydantic error (which would tell the client to fix its request)."""
    try:
        return build(*args)
    except ValidationError as err:
        fields = ", ".join(sorted({".".join(map(str, e["loc"])) for e in err.errors()}))
        raise InternalServerError(f"the answer failed its schema ({err.title}: {fields})") from err


class UserErrorLogs(logging.Filter):
    """BentoML logs every rejected request as an error with its traceback, and pydantic's message
    echoes the offending values (member ids among them). Log one line naming the fields instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        path = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        if isinstance(exc, ValidationError):
            fields = ", ".join(sorted({".".join(map(str, e["loc"])) or "body" for e in exc.errors()}))
            record.msg, record.args = "invalid request to %s: %s", (path, fields)
        elif isinstance(exc, BentoMLException) and exc.error_code < 500:
            record.msg, record.args = "rejected request to %s: %s", (path, str(exc))  # our messages name fields
        else:
            return True
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class ApiKeyMiddleware:
    """401 without a valid ``X-API-Key`` (or ``Authorization: Bearer``) on every path but health/docs;
    request-validation errors (BentoML answers 400) become 422 with BentoML's message; ``/docs.json``
    is the complete OpenAPI 3.1 document (:mod:`serving.openapi`). The keys are read from the
    settings when BentoML builds the app in a worker, not at import."""

    # the worker's readiness report, set by the service once it is constructed
    report: Callable[[], dict] | None = None

    def __init__(self, app, keys: str | None = None):
        self.app = app
        keys = Settings().api_keys if keys is None else keys
        self.keys = [k.strip().encode() for k in keys.split(",") if k.strip()]
        self._spec: bytes | None = None

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ").strip()
        return bool(given) and any(hmac.compare_digest(given, k) for k in self.keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path == "/docs.json" and method == "GET":
            return await self._send_json(send, 200, self._openapi())
        if path in HEALTH_PATHS and method == "GET":
            return await self._health(send, path)
        if path in OPEN_PATHS or (method == "GET" and (path in DOC_PATHS or path.startswith("/static_content"))):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        if not self._authorised(headers):
            return await self._send_json(send, 401, b'{"error":"missing or invalid API key (X-API-Key header)"}')
        if method == "POST" and not headers.get(b"content-type", b"application/json").startswith(b"application/json"):
            return await self._send_json(
                send, 415, b'{"error":"request bodies are JSON: Content-Type: application/json"}'
            )

        held: dict = {}  # the start of a 400 answer, sent once its body is known

        async def remap(message):
            if message["type"] == "http.response.start" and message["status"] == 400 and method == "POST":
                held["start"] = message
                return
            if "start" in held and message["type"] == "http.response.body":
                return await self._send_json(send, 422, _error_object(message.get("body", b"")))
            await send(message)

        return await self.app(scope, receive, remap)

    async def _health(self, send, path: str) -> None:
        """``/readyz``: 200 when every component is ok, 503 otherwise; ``/healthz``: 200 while the
        process answers. Both name each component and its status."""
        report = ApiKeyMiddleware.report
        if report is None:
            doc = {"ready": False, "version": __version__, "components": {"service": {"status": "starting"}}}
        else:
            doc = await anyio.to_thread.run_sync(report)  # store probes block: off the event loop
        status = 200 if path == "/healthz" or doc["ready"] else 503
        await self._send_json(send, status, json.dumps(doc).encode())

    def _openapi(self) -> bytes:
        if self._spec is None:
            from serving.openapi import full_spec

            self._spec = json.dumps(full_spec(LoyaltyDecisionService)).encode()
        return self._spec

    @staticmethod
    async def _send_json(send, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# Workers and threads per worker come from the settings through BentoML's own configuration
# (``serving.launch.service_env``), so that nothing is read at import.
# Admission is bounded by ``serving.limits.RequestLimits`` (503 + Retry-After, per worker), not by
# BentoML's max_concurrency, whose 429 carries no Retry-After.
@bentoml.service(name=SERVICE_NAME, traffic={"timeout": 30})
class LoyaltyDecisionService:
    """Next-best-offer, personalised benefits, churn risk and recommendations for loyalty members."""

    @bentoml.on_deployment
    def refuse_unsafe_settings() -> None:
        """Once, before any worker starts: settings that do not validate (the production profile with
        the demo's keys, say) stop ``bentoml serve`` with one line and exit status 2."""
        try:
            Settings()
        except ValueError as err:
            print(f"loyalty decision service: refusing to start: {settings_error(err)}", file=sys.stderr)
            raise SystemExit(2) from None

    def __init__(self) -> None:
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("bentoml._internal.server.http_app").addFilter(UserErrorLogs())
        logging.getLogger("loyalty.serving.champions").setLevel(logging.INFO)
        self.runtime = DecisionRuntime(Settings())
        ApiKeyMiddleware.report = self.runtime.ready
        # Everything loaded so far (models, Feast registry, catalogue) lives as long as the
        # worker: out of the collector's sight, a full collection takes ~0 ms instead of ~200 ms
        # (which showed as the p99 of an open-loop load test).
        gc.collect()
        gc.freeze()
        # promotions are picked up by polling the registry's aliases: no restart
        self.watcher = self.runtime.watch_models(self.runtime.settings.model_refresh_seconds)

    def _check_ts(self, ts: int | None, field: str = "ts") -> None:
        """422 naming the field for a time before the programme's first data or over a day ahead."""
        if ts is None:
            return
        first, last = self.runtime.ts_window()
        if ts < first:
            raise InvalidArgument(f"{field}: {ts} is before the programme's first data ({first}, unix seconds)")
        if ts > last:
            raise InvalidArgument(f"{field}: {ts} is more than a day in the future (now + 1 day = {last})")

    def __is_ready__(self) -> bool:
        return bool(self.runtime.ready()["ready"])

    @bentoml.api
    def next_best_offer(
        self,
        member_id: str = MemberId,
        channel: Channel = "app",
        ts: UnixTime | None = Timestamp,
        max_results: json_int(1, 20) = 3,
        category: Name | None = Field(None, description="current category page: only its offers"),
        store_id: Id | None = Field(None, description="store of the request (logged with it)"),
        region: Name | None = Field(None, description="region of the request (logged with it)"),
    ) -> NextBestOfferResponse:
        """Ranked offers with expected incremental value, reason codes and the decision trace."""
        self._check_ts(ts)
        context = {"store_id": store_id, "region": region, "category": category}
        return own_answer(self.runtime.next_best_offer, member_id, channel, ts, max_results, category, context)

    @bentoml.api
    def next_best_offer_batch(
        self,
        member_ids: list[MemberIdItem] = Field(min_length=1, max_length=MAX_BATCH_DECISIONS),
        channel: Channel = "app",
        ts: UnixTime | None = Timestamp,
        max_results: json_int(1, 20) = 1,
    ) -> list[NextBestOfferResponse]:
        """The same decision for a campaign list (no budget; see ``loyalty-ml score-batch`` for one)."""
        self._check_ts(ts)
        return [own_answer(self.runtime.next_best_offer, m, channel, ts, max_results) for m in member_ids]

    @bentoml.api
    def personalized_benefits(
        self,
        member_id: str = MemberId,
        max_results: json_int(1, 50) = 5,
        ts: UnixTime | None = Timestamp,
    ) -> BenefitsResponse:
        """Benefits catalogue ranked for the member (CF affinity, spend, dimension fit, cost), eligible only."""
        self._check_ts(ts)
        return own_answer(self.runtime.personalized_benefits, member_id, max_results, ts)

    @bentoml.api
    def churn_risk(self, member_id: str = MemberId, ts: UnixTime | None = Timestamp) -> ChurnRiskResponse:
        """Calibrated churn probability, band, top drivers, health quadrant and suggested action."""
        self._check_ts(ts)
        return own_answer(self.runtime.churn_risk, [member_id], ts)[0]

    @bentoml.api
    def churn_risk_batch(
        self,
        member_ids: list[MemberIdItem] = Field(min_length=1, max_length=MAX_BATCH_MEMBERS),
        ts: UnixTime | None = Timestamp,
    ) -> list[ChurnRiskResponse]:
        """Up to 500 members in one call, read and scored together (``loyalty-ml score-churn`` for a
        whole programme)."""
        self._check_ts(ts)
        return own_answer(self.runtime.churn_risk, [str(m) for m in member_ids], ts)

    @bentoml.api
    def recommendations(
        self,
        member_id: str = MemberId,
        k: json_int(1, 100) = 10,
        include_categories: list[Name] | None = Field(None, max_length=50),
        exclude_categories: list[Name] | None = Field(None, max_length=50),
        history: list[Id] | None = Field(None, max_length=500, description="items of a new member (fold-in)"),
        ts: UnixTime | None = Timestamp,
    ) -> RecommendationsResponse:
        """Top-k items from the CF champion, owned items excluded, category filters applied."""
        self._check_ts(ts)
        return own_answer(
            self.runtime.recommendations, member_id, k, ts, include_categories, exclude_categories, history
        )

    @bentoml.api
    def feedback(self, events: list[FeedbackEvent] = Field(min_length=1, max_length=5000)) -> FeedbackAck:
        """Impressions, clicks, redemptions: stored durably (idempotent by event_id), pushed to Feast.

        503 when the state store is down: nothing was stored, the client retries (same event ids).
        An event id seen before with other content is refused and listed as a conflict."""
        for i, e in enumerate(events):
            self._check_ts(e.ts, f"events[{i}].ts")
        try:
            return own_answer(self.runtime.feedback, [e.model_dump() for e in events])
        except StateUnavailable as err:
            raise ServiceUnavailable(f"{err}; nothing stored, retry with the same event ids") from err


LoyaltyDecisionService.add_asgi_middleware(RequestLimits)  # outermost: sheds before any other work
LoyaltyDecisionService.add_asgi_middleware(ApiKeyMiddleware)
