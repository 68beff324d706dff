"""The ingest edge against every request shape (issues #17 and #18), on a server configured as
`pinwatch ingest` configures it, both ways a report POST can take (the report protocol's short
way: HTTP/1.1 with a Content-Length; uvicorn's ASGI way: chunked, HTTP/1.0, Expect):

- nothing hangs: an upgrade request is answered 400 and closed; a request whose headers or body
  do not arrive within ingest_read_timeout_seconds is answered 408 and closed;
- every answer, 404, 405 and malformed HTTP included, is `{"error","field","detail"}` JSON;
- behind a trusted proxy the stored `client_network` follows X-Forwarded-For as uvicorn's proxy
  middleware reads it, and ignores it from any other peer;
- the uvicorn internals the protocol relies on are all named in one place and all there.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from devstack.clients import native_batch, network_error
from ingest.errors import ErrorBody
from pinwatch.settings import Settings
from tests.support.ingest import (
    RawConnection,
    RunningIngest,
    http_chunked_post,
    http_post,
    read_records,
)
from tests.support.names import TEST_APP, TEST_HOST, TEST_KEY
from tests.support.pipeline import metric_value, run_pipeline
from tests.support.serve import Served, start_ingest

READ_TIMEOUT = 1.0  # seconds: short, so that the slow cases below take little time


def _body(report_id: str | None = None) -> bytes:
    report = network_error(TEST_HOST, "timeout")
    if report_id is not None:
        report["id"] = report_id
    return orjson.dumps(native_batch([report], app=TEST_APP))


def _error(answer: tuple[int, dict[str, str], bytes]) -> dict[str, Any]:
    """The answer's body, checked to be the one error shape, sent as JSON."""
    _, headers, body = answer
    assert headers["content-type"] == "application/json", headers
    parsed = orjson.loads(body)
    assert set(parsed) == {"error", "field", "detail"}, parsed
    ErrorBody.model_validate(parsed)
    return parsed


# --- the uvicorn surface (unit: no server) ------------------------------------------------------


# --- against a served ingest (real broker) ------------------------------------------------------


@pytest.fixture
async def edge(ingest: Callable[..., Awaitable[RunningIngest]]) -> RunningIngest:
    """A real ingest with a short read timeout, spoken to over raw connections."""
    return await ingest(ingest_read_timeout_seconds=READ_TIMEOUT)


async def _ingest_metric(url: str, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    return metric_value(text, name, **labels)


UPGRADES = {
    "websocket, short-way shape": http_post(
        _body(), TEST_KEY, extra="Connection: Upgrade\r\nUpgrade: websocket\r\n"
    ),
    "websocket, chunked": http_chunked_post(
        [_body()], TEST_KEY, extra="Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
    ),
    "h2c": http_post(_body(), TEST_KEY, extra="Connection: Upgrade\r\nUpgrade: h2c\r\n"),
    "websocket on another route": (
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ),
    "CONNECT": b"CONNECT api.pinwatch.test:443 HTTP/1.1\r\nHost: api.pinwatch.test:443\r\n\r\n",
}


async def test_upgrade_requests_are_refused_not_left_hanging(
    edge: tuple[Served, Settings],
) -> None:
    served, settings = edge, edge.settings
    conns = [await RawConnection.open(served.url) for _ in UPGRADES]
    try:
        for conn, request in zip(conns, UPGRADES.values(), strict=True):
            await conn.send(request)
        for conn, name in zip(conns, UPGRADES, strict=True):
            (answer,) = await conn.answers(1, seconds=5)
            status, headers, _ = answer
            assert (status, _error(answer)["error"]) == (400, "bad_request"), name
            assert headers["connection"] == "close", name
            assert await conn.closed_by_server(), name
    finally:
        for conn in conns:
            conn.close()
    # the refused report POSTs are counted as such
    requests = "pinwatch_ingest_requests_total"
    assert await _ingest_metric(served.url, requests, format="native", status="400") == 3
    rejected = "pinwatch_ingest_rejected_total"
    assert await _ingest_metric(served.url, rejected, reason="bad_request") == 3
    # ... and nothing of them is on the topic: only the next good report is
    report_id = str(uuid.uuid4())
    conn = await RawConnection.open(served.url)
    await conn.send(http_post(_body(report_id), TEST_KEY))
    assert (await conn.answers(1))[0][0] == 202
    conn.close()
    assert [r.id for r in await read_records(settings, min_records=1)] == [report_id]


BODY = _body()
HALF = len(BODY) // 2
# name -> (bytes sent before going quiet, whether it reached a report route, 100 Continue first)
SLOW = {
    "short way: half the body": (http_post(BODY, TEST_KEY)[: -len(BODY) + HALF], True, False),
    "short way: headers, then nothing": (http_post(b"", TEST_KEY, length=len(BODY)), True, False),
    "uvicorn's way: a chunk, then nothing": (
        http_chunked_post([BODY[:HALF]], TEST_KEY, end=False),
        True,
        False,
    ),
    "uvicorn's way: HTTP/1.0, half the body": (
        http_post(BODY, TEST_KEY, version="1.0")[: -len(BODY) + HALF],
        True,
        False,
    ),
    "uvicorn's way: Expect: 100-continue, then nothing": (
        http_post(b"", TEST_KEY, length=len(BODY), extra="Expect: 100-continue\r\n"),
        True,
        True,
    ),
    "half the headers": (b"POST /v1/reports HTTP/1.1\r\nHost: t\r\nContent-Le", False, False),
    "nothing at all": (b"", False, False),
}


async def test_slow_requests_get_408_and_the_connection_closed_either_way(
    edge: tuple[Served, Settings],
) -> None:
    """Each slow shape on its own connection, all at once; meanwhile a good request on another
    connection is answered without waiting for them."""
    served, settings = edge, edge.settings
    started = time.monotonic()
    conns = {name: await RawConnection.open(served.url) for name in SLOW}
    try:
        for name, (sent, _, _) in SLOW.items():
            if sent:
                await conns[name].send(sent)
        good = await RawConnection.open(served.url)
        report_id = str(uuid.uuid4())
        await good.send(http_post(_body(report_id), TEST_KEY))
        assert (await good.answers(1))[0][0] == 202
        good.close()

        bodies = set()
        for name, (_, _, continues) in SLOW.items():
            conn = conns[name]
            if continues:
                assert (await conn.answers(1, seconds=10 * READ_TIMEOUT))[0][0] == 100
            (answer,) = await conn.answers(1, seconds=10 * READ_TIMEOUT)
            status, headers, body = answer
            assert (status, _error(answer)["error"], headers["connection"]) == (
                408,
                "timeout",
                "close",
            ), name
            assert await conn.closed_by_server(), name
            bodies.add(body)
        assert time.monotonic() - started >= READ_TIMEOUT  # not before its time
        assert len(bodies) == 1  # the same answer whichever way the request went
    finally:
        for conn in conns.values():
            conn.close()
    routed = sum(1 for _, reached, _ in SLOW.values() if reached)
    requests = "pinwatch_ingest_requests_total"
    assert await _ingest_metric(served.url, requests, format="native", status="408") == routed
    # a request timed out on uvicorn's way is counted once, as a 408 (not also as a 400)
    assert await _ingest_metric(served.url, requests, format="native", status="400") == 0
    assert [r.id for r in await read_records(settings, min_records=1)] == [report_id]


MALFORMED = {
    "request line": b"BLAH\r\n\r\n",
    "header name": b"POST /v1/reports HTTP/1.1\r\nHo st: t\r\n\r\n",
    "chunk size": http_post(b"", TEST_KEY, extra="Transfer-Encoding: chunked\r\n").replace(
        b"Content-Length: 0\r\n", b""
    )
    + b"zz\r\n{}\r\n",
}


async def test_malformed_http_is_a_400_in_the_error_shape(edge: tuple[Served, Settings]) -> None:
    served = edge
    for name, request in MALFORMED.items():
        conn = await RawConnection.open(served.url)
        await conn.send(request)
        (answer,) = await conn.answers(1, seconds=5)
        status, headers, _ = answer
        assert (status, _error(answer)["error"], headers["connection"]) == (
            400,
            "bad_request",
            "close",
        ), name
        assert await conn.closed_by_server(), name
        conn.close()


async def _both_ways(url: str, body: bytes, key: str = TEST_KEY, extra: str = "") -> list[Any]:
    """The answers to one request sent the short way (Content-Length) and uvicorn's way
    (chunked), on one connection."""
    conn = await RawConnection.open(url)
    try:
        await conn.send(
            http_post(body, key, extra=extra) + http_chunked_post([body], key, extra=extra)
        )
        return await conn.answers(2)
    finally:
        conn.close()


async def test_every_answer_has_the_one_error_shape(
    make_settings: Callable[..., Settings],
) -> None:
    """One request per status ingest answers with an error; report-route errors both ways,
    with the same body each way."""
    seen: dict[int, str] = {}

    def check(answers: list[Any], status: int, error: str) -> None:
        for answer in answers:
            assert (answer[0], _error(answer)["error"]) == (status, error), answer
        assert len({answer[2] for answer in answers}) == 1, answers
        seen[status] = error

    settings = make_settings(max_body_bytes=2_000, ingest_read_timeout_seconds=READ_TIMEOUT)
    served = await start_ingest(settings)
    try:
        url = served.url
        check(await _both_ways(url, b"{nope"), 400, "bad_json")
        check(await _both_ways(url, _body(), key="wrong-key-0123456789"), 401, "unauthorized")
        check(await _both_ways(url, b"x" * 3_000), 413, "too_large")
        check(
            await _both_ways(url, _body(), extra="Content-Encoding: br\r\n"),
            415,
            "unsupported_media_type",
        )
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for method, path, status, error in (
                ("GET", "/nope", 404, "not_found"),
                ("POST", "/v1/nope", 404, "not_found"),
                ("GET", "/v1/reports", 405, "method_not_allowed"),
                ("DELETE", "/v1/reports/nel", 405, "method_not_allowed"),
                ("POST", "/healthz", 405, "method_not_allowed"),
            ):
                response = await client.request(method, path)
                answer = (response.status_code, dict(response.headers), response.content)
                check([answer], status, error)
        conn = await RawConnection.open(url)
        await conn.send(MALFORMED["request line"])
        check(await conn.answers(1), 400, "bad_request")
        conn.close()
        conn = await RawConnection.open(url)
        await conn.send(SLOW["short way: headers, then nothing"][0])
        check(await conn.answers(1, seconds=10 * READ_TIMEOUT), 408, "timeout")
        conn.close()
        # Kafka gone from under ingest (its producer stopped): 503 with Retry-After, both ways
        await served.server.config.app.state.sink.stop()
        answers = await _both_ways(url, _body())
        check(answers, 503, "unavailable")
        assert all(int(headers["retry-after"]) > 0 for _, headers, _ in answers)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.get("/readyz")
        check([(503, dict(response.headers), response.content)], 503, "not_ready")
    finally:
        await served.stop(30)

    limited = make_settings(ingest_rate_limit_per_second=1e-6, ingest_rate_limit_burst=1)
    served = await start_ingest(limited)
    try:
        conn = await RawConnection.open(served.url)
        await conn.send(http_post(_body(), TEST_KEY))
        assert (await conn.answers(1))[0][0] == 202
        conn.close()
        answers = await _both_ways(served.url, _body())
        check(answers, 429, "rate_limited")
        assert all(int(headers["retry-after"]) > 0 for _, headers, _ in answers)
    finally:
        await served.stop(30)
    assert sorted(seen) == [400, 401, 404, 405, 408, 413, 415, 429, 503]


PROXY, OTHER_PEER = "127.0.0.1", "127.0.0.3"
TRUSTED = f"{PROXY},10.9.0.0/16"
# X-Forwarded-For header values sent -> the client_network stored when a trusted proxy sent it
FORWARDED = {
    "a chain through two proxies": (["203.0.113.9, 198.51.100.7, 10.9.1.1"], "198.51.100.0/24"),
    "the chain over two headers": (["203.0.113.9, 198.51.100.8", "10.9.1.1"], "198.51.100.0/24"),
    "only trusted proxies": (["10.9.1.1"], "10.9.1.0/24"),
    "an IPv6 client": (["2001:db8:1:2::7"], "2001:db8:1::/48"),
    "not an address": (["unknown"], ""),
    "none": ([], "127.0.0.0/24"),
}


async def test_stored_client_network_follows_forwarded_for_from_trusted_proxies_only(
    make_settings: Callable[..., Settings],
) -> None:
    """Reports sent both ways from the trusted proxy and from another peer, with each kind of
    X-Forwarded-For; the client_network stored in ClickHouse is what uvicorn's proxy middleware
    makes of it, the short way included."""
    settings = make_settings(ingest_forwarded_allow_ips=TRUSTED)
    expected: dict[str, str] = {}
    async with run_pipeline(settings) as p:
        for peer in (PROXY, OTHER_PEER):
            conn = await RawConnection.open(p.ingest_url, local_address=peer)
            for name, (values, network) in FORWARDED.items():
                extra = "".join(f"X-Forwarded-For: {value}\r\n" for value in values)
                short, chunked = str(uuid.uuid4()), str(uuid.uuid4())
                await conn.send(
                    http_post(_body(short), TEST_KEY, extra=extra)
                    + http_chunked_post([_body(chunked)], TEST_KEY, extra=extra)
                )
                assert [a[0] for a in await conn.answers(2)] == [202, 202], name
                want = network if peer == PROXY else "127.0.0.0/24"
                expected[short] = expected[chunked] = want
            conn.close()
        await p.wait_inserted(len(expected), timeout=60)
        rows = await p.store.query("SELECT id, client_network FROM {db}.reports")
    assert dict(rows) == expected
