"""The report protocol (ingest/protocol.py) over raw HTTP/1.1 against a served ingest and the
real broker: report POSTs that take the short way and requests that do not share a connection
and get their answers in order; keep-alive, Connection: close, Expect: 100-continue, HTTP/1.0,
chunked and oversized bodies, a client that leaves early and a graceful shutdown all behave as
uvicorn's own path does; both ways give the same answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from devstack.clients import native_batch, network_error
from ingest.app import create_app
from ingest.cli import server_options
from ingest.producer import KafkaSink
from ingest.protocol import ReportProtocol
from pinwatch.record import Record
from pinwatch.settings import Settings
from tests.support.ingest import (
    RawConnection,
    RunningIngest,
    http_chunked_post,
    http_post,
    read_answer,
    read_records,
)
from tests.support.names import TEST_APP, TEST_HOST, TEST_KEY
from tests.support.polling import eventually
from tests.support.serve import start_ingest, start_server


def _report(report_id: str | None = None) -> tuple[str, bytes]:
    report = network_error(TEST_HOST, "timeout")
    if report_id is not None:
        report["id"] = report_id
    return report["id"], orjson.dumps(native_batch([report], app=TEST_APP))


def _post(body: bytes, *, extra: str = "", version: str = "1.1", key: str = TEST_KEY) -> bytes:
    return http_post(body, key, extra=extra, version=version)


def _chunked_post(body: bytes, *, key: str = TEST_KEY) -> bytes:
    half = len(body) // 2
    return http_chunked_post([body[:half], body[half:]], key)


@pytest.fixture
async def served(ingest: Callable[..., Awaitable[RunningIngest]]) -> RunningIngest:
    """One real ingest for the test, spoken to over raw connections."""
    return await ingest()


@pytest.fixture
async def connect(served: RunningIngest) -> AsyncIterator[Callable[[], Any]]:
    opened: list[RawConnection] = []

    async def open_one() -> RawConnection:
        opened.append(await RawConnection.open(served.url))
        return opened[-1]

    yield open_one
    for conn in opened:
        conn.close()


def _ids(records: list[Record]) -> list[str]:
    return sorted(r.id for r in records)


async def test_served_with_the_report_protocol(served: RunningIngest) -> None:
    assert served.served is not None
    assert issubclass(served.served.server.config.http_protocol_class, ReportProtocol)


async def test_keep_alive_and_pipelining_answer_in_order(
    served: RunningIngest, connect: Any
) -> None:
    """Short-way POSTs, a GET and a chunked POST (uvicorn's way) in one write: answered in the
    order sent, every report on the topic once."""
    settings = served.settings
    conn = await connect()
    a_id, a = _report()
    b_id, b = _report()
    c_id, c = _report()
    d_id, d = _report()
    healthz = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    await conn.send(_post(a) + healthz + _post(b) + _chunked_post(c) + _post(d))
    answers = await conn.answers(5)
    assert [status for status, _, _ in answers] == [202, 200, 202, 202, 202]
    assert orjson.loads(answers[1][2]) == {"status": "ok"}
    for _, headers, body in answers[:1] + answers[2:]:
        assert orjson.loads(body) == {"accepted": 1, "rejected": []}
        assert headers["content-type"] == "application/json"
        assert "connection" not in headers  # kept alive
    # the same connection goes on serving after a pause
    e_id, e = _report()
    await conn.send(_post(e))
    assert (await conn.answers(1))[0][0] == 202
    records = await read_records(settings, min_records=5)
    assert _ids(records) == sorted([a_id, b_id, c_id, d_id, e_id])


async def test_connection_close_and_http_1_0(served: RunningIngest, connect: Any) -> None:
    settings = served.settings
    conn = await connect()
    a_id, a = _report()
    await conn.send(_post(a, extra="Connection: close\r\n"))
    ((status, headers, _),) = await conn.answers(1)
    assert (status, headers["connection"]) == (202, "close")
    assert await conn.closed_by_server()

    old = await connect()
    b_id, b = _report()
    await old.send(_post(b, version="1.0"))
    ((status, _, body),) = await old.answers(1)
    assert (status, orjson.loads(body)["accepted"]) == (202, 1)
    assert await old.closed_by_server()
    assert _ids(await read_records(settings, min_records=2)) == sorted([a_id, b_id])


async def test_expect_100_continue(served: RunningIngest, connect: Any) -> None:
    settings = served.settings
    conn = await connect()
    report_id, body = _report()
    request = _post(body, extra="Expect: 100-continue\r\n")
    await conn.send(request[: -len(body)])
    status, _, _ = await read_answer(conn.reader)
    assert status == 100
    await conn.send(body)
    assert (await conn.answers(1))[0][0] == 202
    assert _ids(await read_records(settings, min_records=1)) == [report_id]


async def test_same_answer_either_way(served: RunningIngest, connect: Any) -> None:
    """The short way and uvicorn's (a chunked body) answer a refused request alike."""
    conn = await connect()
    _, body = _report()
    await conn.send(_post(body, key="wrong-key") + _chunked_post(body, key="wrong-key"))
    short, chunked = await conn.answers(2)
    assert short[0] == chunked[0] == 401
    assert short[2] == chunked[2]
    assert orjson.loads(short[2])["error"] == "unauthorized"
    for name in ("content-type", "content-length", "server"):
        assert short[1][name] == chunked[1][name]
    await conn.send(_post(b"{not json") + _chunked_post(b"{not json"))
    short, chunked = await conn.answers(2)
    assert short[0] == chunked[0] == 400
    assert short[2] == chunked[2]


async def test_body_limits_either_way(make_settings: Callable[..., Settings], connect: Any) -> None:
    """A Content-Length over max_body_bytes is refused (413) on the short way; a body over the
    short way's 64 KiB goes uvicorn's way and is accepted when within the limits."""
    settings = make_settings(max_body_bytes=2_000)
    served = await start_ingest(settings)
    try:
        conn = await RawConnection.open(served.url)
        big = orjson.dumps(
            native_batch([network_error(TEST_HOST, "timeout") for _ in range(20)], app=TEST_APP)
        )
        assert 2_000 < len(big) < 65_536
        await conn.send(_post(big))
        ((status, _, body),) = await conn.answers(1)
        assert (status, orjson.loads(body)["error"]) == (413, "too_large")
        conn.close()
    finally:
        await served.stop(30)

    conn = await connect()
    reports = [network_error(TEST_HOST, "timeout", detail="x" * 200) for _ in range(300)]
    large = orjson.dumps(native_batch(reports, app=TEST_APP))
    assert len(large) > 65_536
    await conn.send(_post(large))
    ((status, _, body),) = await conn.answers(1)
    assert (status, orjson.loads(body)["accepted"]) == (202, 300)


async def test_client_that_leaves_early(served: RunningIngest, connect: Any) -> None:
    """A client gone before its answer harms nobody: its report still reaches Kafka (the id
    dedups its retry downstream) and the server goes on answering."""
    settings = served.settings
    gone = await connect()
    gone_id, body = _report()
    await gone.send(_post(body))
    gone.writer.close()
    conn = await connect()
    next_id, body = _report()
    await conn.send(_post(body))
    assert (await conn.answers(1))[0][0] == 202
    assert _ids(await read_records(settings, min_records=2)) == sorted([gone_id, next_id])


class _HeldSink(KafkaSink):
    """The real sink, holding each request until the test releases it: the request is in
    flight for sure when the test acts."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, records: list[Record]) -> None:
        self.entered.set()
        await self.release.wait()
        await super().send(records)


async def test_graceful_shutdown_answers_what_is_in_flight(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    sink = _HeldSink(settings)
    app = create_app(settings, producer=sink)
    served = await start_server(app, options=server_options(settings, app))
    try:
        conn = await RawConnection.open(served.url)
        report_id, body = _report()
        await conn.send(_post(body))
        await asyncio.wait_for(sink.entered.wait(), 30)
        served.server.should_exit = True  # as SIGTERM does
        # the shutdown has begun (no longer listening) while the request is still held
        assert await eventually(
            lambda: not any(s.is_serving() for s in served.server.servers), timeout=10
        )
        sink.release.set()
        ((status, headers, answer),) = await conn.answers(1)
        assert (status, orjson.loads(answer)["accepted"]) == (202, 1)
        assert headers["connection"] == "close"
        assert await conn.closed_by_server()
        await asyncio.wait_for(served.task, 30)
    finally:
        if not served.task.done():
            await served.stop(30)
        await sink.stop()
    assert _ids(await read_records(settings, min_records=1)) == [report_id]


def test_the_short_way_serves_behind_a_proxy_too(make_settings: Callable[..., Settings]) -> None:
    """Production names its load balancer: the report protocol (its short way included) stays,
    believing that proxy as uvicorn's middleware does on the other way, and no websockets
    (tests/integration/ingest/test_edge.py checks the stored addresses, both ways)."""
    app = create_app(make_settings())
    options = server_options(make_settings(ingest_forwarded_allow_ips="10.0.0.1"), app)
    assert issubclass(options["http"], ReportProtocol)
    assert (options["proxy_headers"], options["forwarded_allow_ips"]) == (True, "10.0.0.1")
    assert options["ws"] == "none"
    trusted = options["http"].trusted
    assert "10.0.0.1" in trusted and "10.0.0.2" not in trusted
    assert server_options(make_settings(), app)["http"].trusted is None
