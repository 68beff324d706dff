"""uvicorn's HTTP protocol (httptools), with a short way through for report POSTs, and the
connection-level guards ingest needs whichever way a request goes.

Why the short way: a single-report request cost the ingest process ~60 us of CPU, and ~15 us of
that was uvicorn's ASGI machinery around it (a scope, an Event, a request-response cycle object,
the ASGI messages, two socket writes, a keep-alive timer). The report endpoint needs none of it:
its body is small and whole by the time the parser says the message is complete. So a report
POST goes from the parser straight to `ReportEndpoint.answer` and back in one write
(benchmarks/bench_ingest.py has the numbers).

What takes the short way: POST to a report path over HTTP/1.1, with a Content-Length of at
most uvicorn's read high-water mark (64 KiB), no Transfer-Encoding, no `Expect: 100-continue`,
nothing else of the connection still being answered. Everything else, every other route, and
every check of the body (ingest/body.py) stays where it was: the answer is the same bytes either
way, since both ways call the same `ReportPath.handle`.

Behind a load balancer (proxies named in `ingest_forwarded_allow_ips`, how production runs) the
short way reads `X-Forwarded-For` itself, with the very `_TrustedHosts` object type uvicorn's
ProxyHeadersMiddleware uses on the other way: believed only from a named proxy, the client is
the right-most address that is not itself a trusted proxy.

Guards for both ways, none of which uvicorn 0.54 has:
- a read timeout: a request's headers and body must arrive within `ingest_read_timeout_seconds`
  of its first byte (of the connection, for its first request), else 408 and the connection is
  closed. One watchdog per server looks at every connection each second: a timer per request
  would cost more than the request's own parsing.
- a request asking for a protocol upgrade (`Upgrade` + `Connection: upgrade`, or CONNECT) is
  answered 400 and the connection closed (uvicorn's websocket path is off: `ws="none"`; httptools
  would otherwise hand the body to the other protocol and the request would hang).
- malformed HTTP, and a failure of the report path, are answered in the one error shape
  (ingest/errors.py), not uvicorn's plain text.

While a report is answered the short way, a `_ShortCycle` stands where uvicorn keeps its
current request-response cycle, so uvicorn's own bookkeeping applies unchanged: a request
pipelined behind it is queued (and reading paused) until it is answered, a graceful shutdown
marks it not to keep the connection alive and waits for its task, a lost connection marks it
disconnected. All of this leans on uvicorn internals: `UVICORN_SURFACE` names every one,
`surface_problems()` checks them when the protocol is built (so a changed uvicorn fails at
start, loudly), pyproject.toml pins uvicorn's minor version, and
tests/integration/ingest/test_protocol.py and tests/integration/ingest/test_edge.py cover each
path.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import httptools
from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from ingest.errors import INTERNAL, MALFORMED, UPGRADE_REFUSED, ApiError, read_timeout
from ingest.reports import JSON_TYPE, Incoming

if TYPE_CHECKING:
    from ingest.reports import ReportEndpoint

log = logging.getLogger("pinwatch.ingest")

# Every name of uvicorn's this module reads, writes, calls or overrides (uvicorn 0.54). The
# module-level names are imported above; tests/unit/ingest/test_protocol_surface.py checks that
# ReportProtocol touches nothing of its base class that is not listed here.
UVICORN_SURFACE: dict[str, tuple[str, ...]] = {
    # per-connection state set in HttpToolsProtocol.__init__ / connection_made
    "HttpToolsProtocol": (
        "parser",
        "cycle",
        "headers",
        "url",
        "expect_100_continue",
        "limit_concurrency",
        "tasks",
        "loop",
        "transport",
        "flow",
        "client",
        "server_state",
        "pipeline",
        "connections",
    ),
    # methods overridden or called; data_received must go on calling the two hooks at the end
    "HttpToolsProtocol methods": (
        "connection_made",
        "on_message_begin",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "on_response_complete",
        "send_400_response",
        "_unsupported_upgrade_warning",
        "data_received",
    ),
    # what uvicorn reads of (or sets on) the current cycle, which _ShortCycle stands in for
    "RequestResponseCycle": (
        "response_complete",
        "response_started",
        "keep_alive",
        "disconnected",
        "message_event",
        "more_body",
        "scope",
    ),
    "FlowControl": ("read_paused", "write_paused", "drain", "pause_reading"),
    "ServerState": ("default_headers", "connections", "tasks"),
    "_TrustedHosts": ("__contains__", "get_trusted_client_address"),
}


def surface_problems() -> list[str]:
    """What of `UVICORN_SURFACE` the installed uvicorn lacks (empty when all is there)."""

    async def _noop(scope: Any, receive: Any, send: Any) -> None:
        pass

    loop = asyncio.new_event_loop()
    try:
        config = Config(_noop, log_config=None, lifespan="off", ws="none", http="httptools")
        protocol = HttpToolsProtocol(config, ServerState(), {}, _loop=loop)
        protocol.on_message_begin()  # sets the per-request state (url, headers, scope)
        cycle = RequestResponseCycle(
            scope={},  # type: ignore[typeddict-item]
            transport=None,  # type: ignore[arg-type]
            flow=None,  # type: ignore[arg-type]
            logger=log,
            access_logger=log,
            access_log=False,
            default_headers=[],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=True,
            on_response=lambda: None,
        )
        protocol.flow = FlowControl(None)  # type: ignore[arg-type]
        objects = {
            "HttpToolsProtocol": protocol,
            "HttpToolsProtocol methods": HttpToolsProtocol,
            "RequestResponseCycle": cycle,
            "FlowControl": protocol.flow,
            "ServerState": protocol.server_state,
            "_TrustedHosts": _TrustedHosts("127.0.0.1"),
        }
        problems = [
            f"uvicorn's {kind} has no {name!r}"
            for kind, names in UVICORN_SURFACE.items()
            for name in names
            if not hasattr(objects[kind], name)
        ]
    except Exception as exc:  # noqa: BLE001 - any failure to build them is the finding
        return [f"uvicorn's protocol objects could not be built: {exc!r}"]
    finally:
        loop.close()
    hooks = inspect.getsource(HttpToolsProtocol.data_received)
    for hook in ("send_400_response", "_unsupported_upgrade_warning"):
        if hook not in hooks:
            problems.append(f"uvicorn's HttpToolsProtocol.data_received no longer calls {hook}")
    return problems


def _http_response(
    status: int,
    content: bytes,
    extra: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
    default_headers: list[tuple[bytes, bytes]],
    keep_alive: bool,
) -> bytes:
    head = [STATUS_LINE[status]]
    for name, value in (*default_headers, JSON_TYPE, *extra):
        head += (name, b": ", value, b"\r\n")
    head += (b"content-length: ", str(len(content)).encode(), b"\r\n")
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head += (b"\r\n", content)
    return b"".join(head)


class _ShortCycle:
    """One report request on its short way; stands in for uvicorn's RequestResponseCycle."""

    __slots__ = (
        "endpoint",
        "headers",
        "query",
        "client",
        "chunks",
        "keep_alive",
        "disconnected",
        "response_complete",
    )

    def __init__(
        self,
        endpoint: ReportEndpoint,
        headers: dict[bytes, bytes],
        query: bytes,
        client: str | None,
        keep_alive: bool,
    ) -> None:
        self.endpoint = endpoint
        self.headers = headers
        self.query = query
        self.client = client  # the peer, or the client a trusted proxy forwarded for
        self.chunks: list[bytes] = []
        self.keep_alive = keep_alive  # uvicorn's shutdown() sets it False
        self.disconnected = False  # uvicorn's connection_lost() sets it True
        self.response_complete = False

    @property
    def message_event(self) -> _ShortCycle:
        return self  # uvicorn's connection_lost() sets it to wake a waiting body read

    def set(self) -> None:
        pass  # nothing waits: the body is read by the parser, not by the app


class _Answered:
    """Stands where a cycle would for a request refused at its headers (it asked for an
    upgrade), so that uvicorn's callbacks that follow see an answered request."""

    __slots__ = ("keep_alive", "disconnected", "response_complete", "more_body")

    def __init__(self) -> None:
        self.keep_alive = False
        self.disconnected = False
        self.response_complete = True
        self.more_body = False

    @property
    def message_event(self) -> _Answered:
        return self

    def set(self) -> None:
        pass


class _Watchdog:
    """Times out the requests of one server that did not arrive in time: looks at every
    connection each `interval` while the server has any (one timer for all of them)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, connections: set[Any], timeout: float
    ) -> None:
        self.loop = loop
        self.connections = connections
        self.timeout = timeout
        self.interval = min(1.0, timeout / 4)
        self.handle: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        if self.handle is None:
            self.handle = self.loop.call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        self.handle = None
        too_old = self.loop.time() - self.timeout
        for connection in list(self.connections):
            started = getattr(connection, "read_started", None)
            # reading paused: ingest holds the request back (pipelined behind an answer)
            if started is not None and started < too_old and not connection.flow.read_paused:
                connection.read_timed_out()
        if self.connections:
            self.watch()


_WATCHDOGS: WeakKeyDictionary[ServerState, _Watchdog] = WeakKeyDictionary()


class ReportProtocol(HttpToolsProtocol):
    """Bound to one app's report endpoints, proxies and read timeout by `report_protocol`."""

    endpoints: dict[bytes, ReportEndpoint] = {}
    trusted: _TrustedHosts | None = None  # proxies whose X-Forwarded-For is believed
    read_timeout: float = 30.0
    # Per connection: when the request being read began (None between requests), and whether
    # its headers are complete (its cycle is then `self.cycle`).
    read_started: float | None = None
    headers_done = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.read_started = self.loop.time()  # a first request must arrive in time too
        watchdog = _WATCHDOGS.get(self.server_state)
        if watchdog is None:
            watchdog = _Watchdog(self.loop, self.connections, self.read_timeout)
            _WATCHDOGS[self.server_state] = watchdog
        watchdog.watch()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.read_started is None:
            self.read_started = self.loop.time()

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.parser.should_upgrade():
            self._refuse_upgrade()
            return
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
        client = self.client[0] if self.client else None
        trusted = self.trusted
        if trusted is not None and client in trusted:
            # as ProxyHeadersMiddleware: every X-Forwarded-For header, in order, as one list
            forwarded = [value for name, value in self.headers if name == b"x-forwarded-for"]
            if forwarded:
                address = b", ".join(forwarded).decode("latin-1")
                host, _ = trusted.get_trusted_client_address(address)
                if host:
                    client = host
        return _ShortCycle(endpoint, headers, url.query or b"", client, parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is _ShortCycle:
            cycle.chunks.append(body)  # at most the Content-Length checked above
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self.read_started = None
        self.headers_done = False
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
            cycle.keep_alive = False
            response = self._error_response(INTERNAL)
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
        request = Incoming(cycle.headers, cycle.query, cycle.client, body=body)
        status, content, extra = await cycle.endpoint.answer(request)
        return _http_response(
            status, content, extra, self.server_state.default_headers, cycle.keep_alive
        )

    def _error_response(self, error: ApiError, endpoint: ReportEndpoint | None = None) -> bytes:
        """`error` as a whole response that closes the connection; counted when it answers a
        report route."""
        if endpoint is not None:
            status, content, extra = endpoint.refuse(error)
        else:
            status, content, extra = error.status, error.body(), []
        return _http_response(status, content, extra, self.server_state.default_headers, False)

    # --- refusing what ingest will not read to its end ---------------------------------------

    def read_timed_out(self) -> None:
        """Called by the watchdog: the request being read did not arrive in time."""
        self.read_started = None
        self._refuse(read_timeout(self.read_timeout))

    def send_400_response(self, msg: str) -> None:
        # uvicorn's, after httptools could not parse the request (uvicorn logged it): the
        # error shape instead of plain text, and no answer written across an earlier one
        self._refuse(MALFORMED)

    def _refuse_upgrade(self) -> None:
        earlier = self.cycle
        self.cycle = _Answered()  # type: ignore[assignment]
        if earlier is not None and not earlier.response_complete:
            self._close_after(earlier)  # pipelined behind an answer: that goes out, then close
            return
        endpoint = None
        if self.parser.get_method() == b"POST":
            endpoint = self.endpoints.get(httptools.parse_url(self.url).path)
        self.transport.write(self._error_response(UPGRADE_REFUSED, endpoint))
        self.transport.close()

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's, once httptools reached the end of a request asking for an upgrade (refused
        # in on_headers_complete): what follows on the connection is not HTTP/1.1, so stop
        if not self.transport.is_closing():
            self.flow.pause_reading()

    def _refuse(self, error: ApiError) -> None:
        """Answer the request being read with `error` and close the connection: ingest will
        not read it to its end (malformed, or too slow)."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if not self.headers_done:  # no cycle of its own yet; `cycle` is an earlier request's
            if cycle is not None and not cycle.response_complete:
                self._close_after(cycle)
            else:
                self.transport.write(self._error_response(error))
                self.transport.close()
            return
        if type(cycle) is _ShortCycle:  # its body is still due
            cycle.response_complete = True
            self.transport.write(self._error_response(error, cycle.endpoint))
            self.transport.close()
            return
        if self.pipeline or cycle.response_started:
            # queued behind an earlier answer, or already being answered by the app
            self._close_after(cycle)
            return
        # uvicorn's way, the app waiting for the body: answered here; the app is told the
        # client is gone (ClientGone: not counted twice)
        endpoint = None
        if cycle.scope.get("method") == "POST":
            endpoint = self.endpoints.get(cycle.scope.get("raw_path", b""))
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.write(self._error_response(error, endpoint))
        self.transport.close()

    def _close_after(self, cycle: Any) -> None:
        """Close the connection once `cycle` (still being answered) is; read nothing more."""
        cycle.keep_alive = False
        if cycle.response_complete:
            self.transport.close()
        else:
            self.flow.pause_reading()


def report_protocol(
    endpoints: dict[str, ReportEndpoint],
    *,
    forwarded_allow_ips: str = "",
    read_timeout: float = 30.0,
) -> type[asyncio.Protocol]:
    """A protocol class for uvicorn's `http` option that answers these report paths itself,
    believes X-Forwarded-For from `forwarded_allow_ips` (uvicorn's syntax; empty: nobody) and
    refuses requests that take longer than `read_timeout` seconds to arrive. Raises
    RuntimeError naming what is missing when the installed uvicorn lacks what it relies on."""
    problems = surface_problems()
    if problems:
        raise RuntimeError(
            "ingest/protocol.py does not fit the installed uvicorn: " + "; ".join(problems)
        )
    trusted = forwarded_allow_ips.strip()
    namespace: dict[str, Any] = {
        "endpoints": {p.encode(): e for p, e in endpoints.items()},
        "trusted": _TrustedHosts(trusted) if trusted else None,
        "read_timeout": read_timeout,
    }
    return type("ReportProtocol", (ReportProtocol,), namespace)
