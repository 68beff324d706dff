"""Helpers for ingest tests and the ingest benchmark: serve fresh ingest apps
(tests/support/serve.py) with a client, read records back from a real topic, and speak raw
HTTP/1.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from pinwatch.kafka import client_args
from pinwatch.record import Record, decode_batch
from pinwatch.settings import Settings
from tests.support.names import TEST_KEY
from tests.support.pipeline import metric_value
from tests.support.serve import Served, start_ingest

# What a test's client sends unless told otherwise: the test app's key and JSON.
DEFAULT_HEADERS = {"X-Pinwatch-Key": TEST_KEY, "Content-Type": "application/json"}


class RunningIngest:
    """A client for an ingest at `url` (one this process serves, or a `pinwatch up` stack's)
    that sends the default headers (from 127.0.0.1, or from another loopback `source` address:
    each 127.x.y.0/24 is a client network of its own)."""

    def __init__(
        self,
        url: str,
        settings: Settings,
        default_headers: dict[str, str] = DEFAULT_HEADERS,
        served: Served | None = None,
    ) -> None:
        self.url = url
        self.served = served  # when this process serves it: uvicorn's server and config
        self.settings = settings
        self.default_headers = default_headers
        self.client = httpx.AsyncClient(base_url=self.url, timeout=30)
        self._sources: dict[str, httpx.AsyncClient] = {}

    async def send(
        self, path: str, body: Any, content_type: str = "application/json", **headers: str
    ) -> httpx.Response:
        """POST as the HPKP-family clients do: the key in the URL (TrustKit's kTSKReportUris
        and a Report-To endpoint carry it there), no key header."""
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return await self.client.post(
            path,
            params={"key": TEST_KEY},
            content=content,
            headers={"Content-Type": content_type, **headers},
        )

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of `name`'s samples with these labels on ingest's own /metrics."""
        return metric_value((await self.client.get("/metrics")).text, name, **labels)

    def client_from(self, source: str | None) -> httpx.AsyncClient:
        if source is None:
            return self.client
        if source not in self._sources:
            transport = httpx.AsyncHTTPTransport(local_address=source)
            self._sources[source] = httpx.AsyncClient(
                base_url=self.url, transport=transport, timeout=30
            )
        return self._sources[source]

    async def aclose(self) -> None:
        for client in (self.client, *self._sources.values()):
            await client.aclose()

    async def post(
        self,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        path: str = "/v1/reports",
        params: dict[str, str] | None = None,
        source: str | None = None,
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        all_headers = {**self.default_headers, **(headers or {})}
        client = self.client_from(source)
        return await client.post(path, content=content, headers=all_headers, params=params)


@asynccontextmanager
async def ingest_apps(
    make_settings: Callable[..., Settings], default_headers: dict[str, str] = DEFAULT_HEADERS
) -> AsyncIterator[Callable[..., Awaitable[RunningIngest]]]:
    """Yields `start(**settings_overrides)`, which serves a fresh ingest app; all are shut
    down (producer flushed) on exit."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> RunningIngest:
            settings = make_settings(**overrides)
            served = await start_ingest(settings)
            stack.push_async_callback(served.stop, 30)
            running = RunningIngest(served.url, settings, default_headers, served)
            stack.push_async_callback(running.aclose)
            return running

        yield start


async def read_messages(
    settings: Settings, *, min_records: int, within: float = 20.0
) -> list[tuple[int, bytes]]:
    """(partition, value) of every message on the topic, reading until `min_records` records
    arrived and then a short quiet period (so extra records would be seen too)."""
    consumer = AIOKafkaConsumer(
        settings.kafka_topic,
        **client_args(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[tuple[int, bytes]] = []
    records = 0
    try:
        deadline = time.monotonic() + within
        quiet_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for tp, messages in batch.items():
                for message in messages:
                    out.append((tp.partition, message.value))
                    records += len(decode_batch(message.value))
            if records >= min_records:
                if quiet_until is None:
                    quiet_until = time.monotonic() + 1.0
                elif time.monotonic() > quiet_until:
                    break
    finally:
        await consumer.stop()
    return out


async def read_records(
    settings: Settings, *, min_records: int, within: float = 20.0
) -> list[Record]:
    messages = await read_messages(settings, min_records=min_records, within=within)
    return [record for _, value in messages for record in decode_batch(value)]


# --- raw HTTP/1.1, for what an HTTP client library would not send ----------------------------

Answer = tuple[int, dict[str, str], bytes]  # status, headers (names lower-case), body


def http_post(
    body: bytes,
    key: str,
    *,
    path: str = "/v1/reports",
    extra: str = "",
    version: str = "1.1",
    length: int | None = None,
) -> bytes:
    """A report POST with a Content-Length (of `body`, unless `length` says otherwise)."""
    size = len(body) if length is None else length
    head = (
        f"POST {path} HTTP/{version}\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"X-Pinwatch-Key: {key}\r\nContent-Length: {size}\r\n{extra}\r\n"
    )
    return head.encode() + body


def http_chunked_post(
    chunks: list[bytes], key: str, *, path: str = "/v1/reports", extra: str = "", end: bool = True
) -> bytes:
    """A report POST with a chunked body (`end`: with the last, empty chunk)."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"X-Pinwatch-Key: {key}\r\nTransfer-Encoding: chunked\r\n{extra}\r\n".encode()
        + body
        + (b"0\r\n\r\n" if end else b"")
    )


async def read_answer(reader: asyncio.StreamReader, seconds: float = 20) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


class RawConnection:
    """One raw HTTP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str, local_address: str | None = None) -> RawConnection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(
            parts.hostname, parts.port, local_addr=(local_address, 0) if local_address else None
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answers(self, n: int, seconds: float = 20) -> list[Answer]:
        return [await read_answer(self.reader, seconds) for _ in range(n)]

    async def closed_by_server(self, seconds: float = 2) -> bool:
        """Closed within `seconds` (at once, not by uvicorn's idle timeout, 5 s, later)."""
        return await asyncio.wait_for(self.reader.read(1), seconds) == b""

    def close(self) -> None:
        self.writer.close()
