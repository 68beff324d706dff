"""The report routes: one POST per registered format, all through the same request path.

auth (401) -> the app's and the client network's rate limits (429) -> Content-Type (415) ->
Content-Encoding (415) -> body within limits (413) -> JSON (400) -> the format's parser (400/413
naming the field) -> the device's rate limit (429: the device hash is known only once the body is
parsed) -> Kafka (202 only once acknowledged, else 503 with Retry-After).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request, Response
from starlette.types import Receive, Scope

from ingest.body import read_body
from ingest.errors import REPORT_RESPONSES, ApiError, ClientGone
from ingest.formats import FORMATS
from ingest.formats.base import BadReport, FormatSpec, IngestContext, NotJson, Parsed
from ingest.metrics import IngestMetrics, Reason
from ingest.producer import KafkaSink, ProduceFailed, RecordTooLarge
from ingest.ratelimit import limiter
from pinwatch.logs import event
from pinwatch.policy import Policy
from pinwatch.privacy import DeviceHasher, network_prefix
from pinwatch.record import Record
from pinwatch.settings import Settings

log = logging.getLogger("pinwatch.ingest")

KEY_HEADER = b"x-pinwatch-key"

_PARAMETERS = [
    {
        "name": "X-Pinwatch-Key",
        "in": "header",
        "required": False,
        "description": "The app's ingest key (from the pin policy). Either this or `key`.",
        "schema": {"type": "string"},
    },
    {
        "name": "key",
        "in": "query",
        "required": False,
        "description": "The app's ingest key, for reporters that cannot set headers.",
        "schema": {"type": "string"},
    },
    {
        "name": "Content-Encoding",
        "in": "header",
        "required": False,
        "description": "identity (default) or gzip.",
        "schema": {"type": "string", "enum": ["identity", "gzip"]},
    },
]


class Incoming:
    """What the report path reads of a request: headers looked up in a dict built once
    (Starlette's Request scans the header list on every access), decoded only when read; the
    body either given whole (`ingest.protocol`'s short way) or received from ASGI."""

    __slots__ = ("headers", "query_string", "client_host", "receive", "_held", "_ended")

    def __init__(
        self,
        headers: dict[bytes, bytes],
        query_string: bytes,
        client_host: str | None,
        receive: Receive | None = None,
        body: bytes | None = None,
    ) -> None:
        self.headers = headers  # names lower-case, as ASGI and uvicorn give them
        self.query_string = query_string
        self.client_host = client_host
        self.receive = receive
        self._held = body  # a piece read already, which stream() yields first
        self._ended = body is not None  # nothing follows _held

    @classmethod
    def from_scope(cls, scope: Scope, receive: Receive) -> Incoming:
        client = scope.get("client")
        return cls(
            dict(scope["headers"]),
            scope.get("query_string", b""),
            client[0] if client else None,
            receive,
        )

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def query(self, name: str) -> str | None:
        values = parse_qs(self.query_string.decode("latin-1")).get(name)
        return values[0] if values else None

    async def first_chunk(self) -> bytes | None:
        """The whole body when it came in one piece (no async generator needed), else None and
        `stream()` starts with this piece."""
        if self._ended:
            held, self._held = self._held, None
            return held or b""
        message = await self._next()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        self._held = body
        return None

    async def stream(self) -> AsyncIterator[bytes]:
        if self._held is not None:
            held, self._held = self._held, None
            yield held
        while not self._ended:
            message = await self._next()
            yield message.get("body", b"")
            self._ended = not message.get("more_body", False)

    async def _next(self) -> Any:
        if self.receive is None:
            raise RuntimeError("Incoming without a body source")  # a bug here, not input
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        return message


JSON_TYPE = (b"content-type", b"application/json")


class ReportPath:
    """Everything a report route needs, built once per app (no module globals)."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        sink: KafkaSink,
        metrics: IngestMetrics,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.sink = sink
        self.metrics = metrics
        s = settings
        self.app_limit = limiter(
            s.ingest_rate_limit_per_second,
            s.ingest_rate_limit_burst,
            max(1, len(policy.document.apps)),
        )
        self.network_limit = limiter(
            s.ingest_network_rate_limit_per_second,
            s.ingest_network_rate_limit_burst,
            s.ingest_rate_limit_max_keys,
        )
        self.device_limit = limiter(
            s.ingest_device_rate_limit_per_second,
            s.ingest_device_rate_limit_burst,
            s.ingest_rate_limit_max_keys,
        )
        # HMAC setup costs ~20 us; a device reports again and again, so remember its hash
        self.hasher = lru_cache(maxsize=65_536)(DeviceHasher(settings.device_hash_key))

    async def handle(
        self, spec: FormatSpec, request: Incoming
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """(status, JSON body, extra headers) of the answer to one report request."""
        try:
            accepted, rejected = await self._accept(spec, request)
        except ClientGone as exc:
            return exc.status, exc.body(), []  # nobody to answer: not counted
        except ApiError as exc:
            return self.refused(spec, exc)
        metrics = self.metrics
        metrics.requests.add((spec.name, 202))
        metrics.reports.add((spec.name,), accepted)
        if rejected:
            metrics.rejected.add((spec.name, Reason.BAD_ITEM), len(rejected))
        return 202, orjson.dumps({"accepted": accepted, "rejected": rejected}), []

    def refused(
        self, spec: FormatSpec, error: ApiError
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """The answer to a request refused with `error`, counted."""
        self.metrics.requests.add((spec.name, error.status))
        if error.reason:
            self.metrics.rejected.add((spec.name, error.reason))
        extra = [(b"retry-after", str(error.retry_after).encode())] if error.retry_after else []
        return error.status, error.body(), extra

    async def _accept(self, spec: FormatSpec, request: Incoming) -> tuple[int, list[Any]]:
        settings = self.settings
        key = request.header(KEY_HEADER) or request.query("key")
        app_id = self.policy.app_for_key(key)
        if app_id is None:
            raise ApiError(
                401,
                "unauthorized",
                "missing ingest key" if not key else "unknown ingest key",
                reason=Reason.UNAUTHORIZED,
            )
        now = time.monotonic()
        if self.app_limit is not None:
            wait = self.app_limit.take(app_id, now)
            if wait is not None:
                raise _limited(wait, Reason.RATE_LIMITED, app_id, self.app_limit.per_second)
        network = _network_prefix(request.client_host)
        if network and self.network_limit is not None:
            wait = self.network_limit.take(network, now)
            if wait is not None:
                limit = self.network_limit.per_second
                raise _limited(wait, Reason.RATE_LIMITED_NETWORK, f"network {network}", limit)
        media = (request.header(b"content-type") or "").split(";", 1)[0].strip().lower()
        if media not in spec.content_types:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type {media or '(none)'!r} is not accepted here; send "
                + " or ".join(spec.content_types),
                reason=Reason.MEDIA_TYPE,
            )
        body = await read_body(request, settings.max_body_bytes, settings.max_decompressed_bytes)
        parsed = self._parse(spec, body, request, network, app_id)
        if self.device_limit is not None:
            self._limit_devices(parsed.records, time.monotonic())  # the body took its time
        if not parsed.records and parsed.rejected:
            first = parsed.rejected[0]
            raise ApiError(
                400,
                "bad_report",
                f"no item was acceptable; first: {first.problem}",
                field=first.field,
                reason=Reason.BAD_REPORT,
            )
        started = time.perf_counter()
        try:
            await self.sink.send(parsed.records)
        except ProduceFailed as exc:
            self.metrics.produce_errors.add((exc.reason,))
            raise ApiError(
                503,
                "unavailable",
                f"reports not accepted: {exc.detail}",
                retry_after=settings.ingest_retry_after_seconds,
                reason=Reason.UNAVAILABLE,
            ) from None
        except RecordTooLarge as exc:
            raise ApiError(413, "too_large", str(exc), reason=Reason.TOO_LARGE) from None
        self.metrics.produce_seconds.observe(time.perf_counter() - started)
        rejected = [
            {"index": r.index, "field": r.field, "detail": r.problem} for r in parsed.rejected
        ]
        return len(parsed.records), rejected

    def _limit_devices(self, records: list[Record], now: float) -> None:
        """Every device of the request within its rate. One in practice (a native batch and a
        TrustKit report come from one device; HPKP and NEL reports carry none), so a device is
        charged once per run of its records, without building a set for each request."""
        limit = self.device_limit
        assert limit is not None
        charged = ""
        for record in records:
            device = record.device
            if device and device != charged:
                charged = device
                wait = limit.take(device, now)
                if wait is not None:
                    raise _limited(
                        wait, Reason.RATE_LIMITED_DEVICE, "this device", limit.per_second
                    )

    def _parse(
        self, spec: FormatSpec, body: bytes, request: Incoming, network: str, app_id: str
    ) -> Parsed:
        ctx = IngestContext(
            app_id=app_id,
            received_at_ms=time.time_ns() // 1_000_000,
            client_network=network,
            hash_device=self.hasher,
            settings=self.settings,
            policy=self.policy,
            user_agent=(request.header(b"user-agent") or "")[: self.settings.max_string_length],
        )
        try:
            return spec.parse(spec.decode(body, self.settings), ctx)
        except NotJson as exc:
            raise ApiError(
                400, "bad_json", f"body is not JSON: {exc}", reason=Reason.BAD_JSON
            ) from None
        except BadReport as exc:
            error = "too_large" if exc.status == 413 else "bad_report"
            reason = Reason.TOO_LARGE if exc.status == 413 else Reason.BAD_REPORT
            raise ApiError(exc.status, error, exc.problem, field=exc.field, reason=reason) from None
        except Exception as exc:  # noqa: BLE001 - a parser bug must not become a 500 for input
            event(log, "parser_failed", logging.ERROR, format=spec.name, error=repr(exc))
            raise ApiError(
                400, "bad_report", "the report could not be parsed", reason=Reason.BAD_REPORT
            ) from None


class ReportEndpoint:
    """One report route's answers: `ingest.protocol` calls `answer` straight from the parser
    for most report POSTs (FastAPI's per-request machinery cost more than the report path
    itself); the FastAPI route `report_router` makes answers the rest with the same call."""

    def __init__(self, path: ReportPath, spec: FormatSpec) -> None:
        self.path = path
        self.spec = spec

    def answer(self, request: Incoming) -> Awaitable[tuple[int, bytes, list[tuple[bytes, bytes]]]]:
        return self.path.handle(self.spec, request)

    def refuse(self, error: ApiError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """The answer to a request of this route that `ingest.protocol` refuses itself (it
        timed out, or asked for an upgrade), counted like any other refusal."""
        return self.path.refused(self.spec, error)


def report_endpoints(path: ReportPath) -> dict[str, ReportEndpoint]:
    """Route path -> its endpoint, for every registered format."""
    return {spec.path: ReportEndpoint(path, spec) for spec in FORMATS.values()}


def _limited(wait: int, reason: Reason, who: str, per_second: float) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        f"{who} exceeds {per_second:g} requests/s; retry after {wait} s",
        retry_after=wait,
        reason=reason,
    )


# Parsing addresses with ipaddress costs ~30 us; clients repeat (NAT, keep-alive), so remember.
_network_prefix = lru_cache(maxsize=65_536)(network_prefix)


def report_router(endpoints: dict[str, ReportEndpoint], settings: Settings) -> APIRouter:
    router = APIRouter(tags=["reports"])
    for endpoint in endpoints.values():
        spec = endpoint.spec
        router.add_api_route(
            spec.path,
            _route(endpoint),
            methods=["POST"],
            status_code=202,
            summary=spec.summary or f"{spec.name} reports",
            name=f"post_{spec.name}_reports",
            response_class=Response,
            responses=REPORT_RESPONSES,
            openapi_extra=_openapi_extra(spec, settings),
        )
        # Browsers upload Reporting API (NEL) reports to another origin only after a CORS
        # preflight answered 2xx with Allow-Origin and Allow-Headers (Chromium's
        # ReportingUploader); otherwise the reports are silently dropped.
        router.add_api_route(spec.path, _preflight, methods=["OPTIONS"], include_in_schema=False)
    return router


# Report uploads carry no credentials, so any origin may send them.
_PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "content-type, content-encoding, x-pinwatch-key",
    "Access-Control-Max-Age": "86400",
}


async def _preflight() -> Response:
    return Response(status_code=204, headers=_PREFLIGHT_HEADERS)


def _route(endpoint: ReportEndpoint):  # noqa: ANN202 - FastAPI reads its signature
    async def post_reports(request: Request) -> Response:
        status, body, extra = await endpoint.answer(
            Incoming.from_scope(request.scope, request.receive)
        )
        headers = {k.decode(): v.decode() for k, v in extra}
        return Response(body, status, headers=headers, media_type="application/json")

    post_reports.__doc__ = endpoint.spec.summary
    return post_reports


def _openapi_extra(spec: FormatSpec, settings: Settings) -> dict[str, Any]:
    if spec.request_schema is not None:
        name, _ = spec.request_schema(settings)
        schema: dict[str, Any] = {"$ref": f"#/components/schemas/{name}"}
    else:
        schema = {"type": ["object", "array"], "description": f"A {spec.name} report document."}
    return {
        "parameters": _PARAMETERS,
        "requestBody": {
            "required": True,
            "content": {ct: {"schema": schema} for ct in spec.content_types},
        },
    }


def request_schemas(settings: Settings) -> dict[str, Any]:
    """Component schemas of every format's request body, for the OpenAPI document."""
    out: dict[str, Any] = {}
    for spec in FORMATS.values():
        if spec.request_schema is not None:
            out.update(spec.request_schema(settings)[1])
    return out
