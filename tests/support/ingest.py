"""Helpers for ingest tests and the ingest benchmark: serve fresh ingest apps (tests/serve.py)
with a client, and read records back from a real topic."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from pinwatch.record import Record, decode_batch
from pinwatch.settings import Settings
from tests.support.serve import serve_ingest


class RunningIngest:
    """An ingest app served by uvicorn, with a client that sends the default headers."""

    def __init__(self, url: str, settings: Settings, default_headers: dict[str, str]) -> None:
        self.url = url
        self.settings = settings
        self.default_headers = default_headers
        self.client = httpx.AsyncClient(base_url=url, timeout=30)

    async def post(
        self,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        path: str = "/v1/reports",
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        all_headers = {**self.default_headers, **(headers or {})}
        return await self.client.post(path, content=content, headers=all_headers, params=params)


@asynccontextmanager
async def ingest_apps(
    make_settings: Callable[..., Settings], default_headers: dict[str, str] | None = None
) -> AsyncIterator[Callable[..., Awaitable[RunningIngest]]]:
    """Yields `start(**settings_overrides)`, which serves a fresh ingest app; all are shut
    down (producer flushed) on exit."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> RunningIngest:
            settings = make_settings(**overrides)
            url = await stack.enter_async_context(serve_ingest(settings))
            running = RunningIngest(url, settings, default_headers or {})
            stack.push_async_callback(running.client.aclose)
            return running

        yield start


async def read_messages(
    settings: Settings, *, min_records: int, within: float = 20.0
) -> list[tuple[int, bytes]]:
    """(partition, value) of every message on the topic, reading until `min_records` records
    arrived and then a short quiet period (so extra records would be seen too)."""
    consumer = AIOKafkaConsumer(
        settings.kafka_topic,
        bootstrap_servers=settings.kafka_bootstrap,
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
