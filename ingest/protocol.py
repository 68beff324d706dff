"""uvicorn's HTTP protocol (httptools), with a short way through for report POSTs.

Why: a single-report request cost the ingest process ~60 us of CPU, and ~15 us of that was
uvicorn's ASGI machinery around it (a scope, an Event, a request-response cycle object, the
ASGI messages, two socket writes, a keep-alive timer). The report endpoint needs none of it: its
body is small and whole by the time the parser says the message is complete. So a report POST
goes from the parser straight to `ReportEndpoint.answer` and back in one write
(benchmarks/bench_ingest.py has the numbers).

What takes the short way: POST to a report path over HTTP/1.1, with a Content-Length of at
most uvicorn's read high-water mark (64 KiB), no Transfer-Encoding, no `Expect: 100-continue`,
no upgrade, nothing else of the connection still being answered, and no proxy whose headers
must be believed (uvicorn's proxy middleware owns that). Everything else, every other route,
and every check of the body (ingest/body.py) stays where it was: the answer is the same bytes
either way, since both ways call the same `ReportPath.handle`.

While a report is answered the short way, a `_ShortCycle` stands where uvicorn keeps its
current request-response cycle, so uvicorn's own bookkeeping applies unchanged: a request
pipelined behind it is queued (and reading paused) until it is answered, a graceful shutdown
marks it not to keep the connection alive and waits for its task, a lost connection marks it
disconnected. This leans on uvicorn's httptools protocol's attributes, so pyproject.toml pins
uvicorn's minor version and tests/test_ingest_protocol.py covers each of these paths.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ingest.reports import JSON_TYPE, Incoming

if TYPE_CHECKING:
    from ingest.reports import ReportEndpoint

log = logging.getLogger("pinwatch.ingest")

_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


class _ShortCycle:
    """One report request on its short way; stands in for uvicorn's RequestResponseCycle."""

    __slots__ = (
        "endpoint",
        "headers",
        "query",
        "chunks",
        "keep_alive",
        "disconnected",
        "response_complete",
    )

    def __init__(
        self, endpoint: ReportEndpoint, headers: dict[bytes, bytes], query: bytes, keep_alive: bool
    ) -> None:
        self.endpoint = endpoint
        self.headers = headers
        self.query = query
        self.chunks: list[bytes] = []
        self.keep_alive = keep_alive  # uvicorn's shutdown() sets it False
        self.disconnected = False  # uvicorn's connection_lost() sets it True
        self.response_complete = False

    @property
    def message_event(self) -> _ShortCycle:
        return self  # uvicorn's connection_lost() sets it to wake a waiting body read

    def set(self) -> None:
        pass  # nothing waits: the body is read by the parser, not by the app


class ReportProtocol(HttpToolsProtocol):
    """Bound to one app's report endpoints by `report_protocol`."""

    endpoints: dict[bytes, ReportEndpoint] = {}

    def on_headers_complete(self) -> None:
        cycle = self._short_cycle()
        if cycle is None:
            super().on_headers_complete()
        else:
            self.cycle = cycle  # type: ignore[assignment]

    def _short_cycle(self) -> _ShortCycle | None:
        parser = self.parser
        if (
            parser.get_method() != b"POST"
            or self.expect_100_continue
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.limit_concurrency is not None
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
        ):
            return None
        url = httptools.parse_url(self.url)
        endpoint = self.endpoints.get(url.path)
        if endpoint is None:
            return None
        headers = dict(self.headers)
        length = headers.get(b"content-length")
        if (
            length is None
            or b"transfer-encoding" in headers
            or not length.isdigit()
            or int(length) > HIGH_WATER_LIMIT
        ):
            return None
        return _ShortCycle(endpoint, headers, url.query or b"", parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is _ShortCycle:
            cycle.chunks.append(body)  # at most the Content-Length checked above
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not _ShortCycle:
            super().on_message_complete()
            return
        task = self.loop.create_task(self._answer(cycle))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)  # a graceful shutdown waits for it

    async def _answer(self, cycle: _ShortCycle) -> None:
        try:
            response = await self._response(cycle)
        except Exception as exc:  # noqa: BLE001 - answered as uvicorn answers an app's exception
            log.error("report path failed", exc_info=exc)
            response, cycle.keep_alive = _INTERNAL_ERROR, False
        if cycle.disconnected:
            return  # Kafka may have the records; the client retries and the id dedups them
        if self.flow.write_paused:
            await self.flow.drain()
        self.transport.write(response)
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()  # uvicorn's: starts a pipelined request, or the idle timer

    async def _response(self, cycle: _ShortCycle) -> bytes:
        body = cycle.chunks[0] if len(cycle.chunks) == 1 else b"".join(cycle.chunks)
        client = self.client[0] if self.client else None
        request = Incoming(cycle.headers, cycle.query, client, body=body)
        status, content, extra = await cycle.endpoint.answer(request)
        head = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, JSON_TYPE, *extra):
            head += (name, b": ", value, b"\r\n")
        head += (b"content-length: ", str(len(content)).encode(), b"\r\n")
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", content)
        return b"".join(head)


def report_protocol(endpoints: dict[str, ReportEndpoint]) -> type[asyncio.Protocol]:
    """A protocol class for uvicorn's `http` option that answers these report paths itself."""
    by_path: dict[str, Any] = {"endpoints": {p.encode(): e for p, e in endpoints.items()}}
    return type("ReportProtocol", (ReportProtocol,), by_path)
