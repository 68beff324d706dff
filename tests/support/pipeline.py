"""The real pipeline inside a test's event loop: ingest (uvicorn) -> Kafka -> consumer -> chDB,
and the consumer's API (/metrics, /readyz, /v1/rollout) on a free port.

    async with run_pipeline(settings) as p:
        await p.post(native_batch([...], app=TEST_APP))
        await p.wait_inserted(3)
        rows = await p.store.query("SELECT ... FROM {db}.reports")
        text = await p.metrics_text()

chDB allows one engine per process, so ClickHouse is read through `p.store` (the consumer's own
Store), never through a second client. Everything started is stopped on the way out, also when
the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from consumers.api import create_api
from consumers.batch import Batch
from consumers.consumer import Consumer
from consumers.steps import Incoming
from consumers.store import Store
from pinwatch.kafka import client_args
from pinwatch.settings import Settings
from pinwatch.topics import ensure_topics
from tests.support.names import TEST_KEY
from tests.support.serve import Served, start_ingest, start_server


@dataclass
class Pipeline:
    settings: Settings
    store: Store
    consumer: Consumer | None
    ingest_url: str
    consumer_url: str
    run_task: asyncio.Task[None] | None = None

    async def post(
        self,
        body: Any,
        *,
        path: str = "/v1/reports",
        key: str = TEST_KEY,
        expect: int | None = 202,
    ) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.ingest_url, timeout=30) as client:
            response = await client.post(path, json=body, headers={"X-Pinwatch-Key": key})
        if expect is not None and response.status_code != expect:
            raise AssertionError(f"POST {path}: {response.status_code} {response.text[:500]}")
        return response

    async def rows(self) -> int:
        return int(await self.store.scalar("SELECT count() FROM {db}.reports") or 0)

    def committed_reports(self) -> int:
        """Reports this process's consumer has counted (i.e. committed)."""
        if self.consumer is None:
            return 0
        registry = self.consumer.metrics.registry
        return int(
            sum(
                registry.get_sample_value("pinwatch_consumer_inserted_reports_total", {"kind": k})
                or 0
                for k in ("pin_validation", "network_error")
            )
        )

    async def wait_inserted(self, n_reports: int, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Until at least `n_reports` report rows are in ClickHouse *and* committed (so the
        report counters on /metrics include them)."""
        deadline = time.monotonic() + timeout
        rows = 0
        while time.monotonic() < deadline:
            rows = await self.rows()
            if rows >= n_reports and self.committed_reports() >= n_reports:
                return
            if self.consumer is not None and self.consumer.fatal:
                raise AssertionError(f"consumer stopped: {self.consumer.fatal}")
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"{rows} rows in ClickHouse and {self.committed_reports()} committed after "
            f"{timeout}s; waited for {n_reports}"
        )

    async def wait_consumer_stopped(self, seconds: float) -> None:
        """Until the consumer's run ends by itself (e.g. the dead-letter limit); its exception
        stays on `consumer.fatal`."""
        assert self.run_task is not None, "no consumer in this pipeline"
        done, _ = await asyncio.wait({self.run_task}, timeout=seconds)
        if not done:
            raise AssertionError(f"consumer still running after {seconds}s")

    async def metrics_text(self) -> str:
        async with httpx.AsyncClient(base_url=self.consumer_url, timeout=10) as client:
            response = await client.get("/metrics")
        response.raise_for_status()
        return response.text

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`, as /metrics serves it."""
        return metric_value(await self.metrics_text(), name, **labels)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named `name` (with at least `labels`) in a Prometheus exposition."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def produce(settings: Settings, values: list[bytes], partition: int | None = None) -> None:
    """Put message values on the test's topic straight (as a hostile producer, or an ingest
    before a fix, would), one acknowledged message each, in order; on `partition` if given."""
    producer = AIOKafkaProducer(**client_args(settings), acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(settings.kafka_topic, value, partition=partition)
    finally:
        await producer.stop()


async def read_topic(settings: Settings, topic: str, n: int, wait_seconds: float = 30) -> list[Any]:
    """The first messages of `topic`, until `n` are read or `wait_seconds` passed."""
    consumer = AIOKafkaConsumer(topic, **client_args(settings), auto_offset_reset="earliest")
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + wait_seconds
        while len(found) < n and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                found.extend(batch)
    finally:
        await consumer.stop()
    return found


async def group_caught_up(settings: Settings) -> bool:
    """Has the consumer group committed every message of the topic? Counters move only with
    commits, so once this holds the consumers' counts are final: nothing more can be added."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    # subscribed (no group), so it knows the topic's partitions
    reader = AIOKafkaConsumer(settings.kafka_topic, bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await reader.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.kafka_consumer_group)
        partitions = reader.partitions_for_topic(settings.kafka_topic) or set()
        ends = await reader.end_offsets(
            [TopicPartition(settings.kafka_topic, p) for p in partitions]
        )
        # an empty partition has nothing to commit
        return bool(ends) and all(
            end == 0 or (tp in committed and committed[tp].offset == end)
            for tp, end in ends.items()
        )
    finally:
        await reader.stop()
        await admin.close()


@contextlib.asynccontextmanager
async def migrated_store(settings: Settings) -> AsyncIterator[Store]:
    """A Store on the settings' database, migrated; the database is dropped on the way out."""
    store = Store.from_settings(settings)
    await store.migrate(settings)
    try:
        yield store
    finally:
        await store.command("DROP DATABASE IF EXISTS {db}")
        await store.close()


@dataclass
class KafkaMessage:
    """What the consumer reads of a Kafka message (aiokafka's ConsumerRecord)."""

    offset: int
    value: bytes
    timestamp: int = 0


class HandDriven:
    """A Consumer that is never started: a test drives its steps by hand, without Kafka. Dead
    letters are collected in `dead` as (value, headers); a failing insert returns False at once
    instead of retrying (and pausing) until it succeeds."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.consumer = Consumer(settings, store)
        self.steps = self.consumer.steps
        self.dead: list[tuple[bytes, dict[str, bytes]]] = []
        self.steps.dead_letters.sender = self._dead_letter
        self.steps.write.stopping = True

    async def _dead_letter(self, topic: str, value: bytes, headers: list[Any]) -> None:
        self.dead.append((value, dict(headers)))

    @property
    def batch(self) -> Batch:
        """The open batch (what `handle` added to since the last `write`)."""
        return self.steps.reduce.batch

    async def handle(self, topic: str, partition: int, message: KafkaMessage) -> None:
        incoming = Incoming(topic, partition, message.offset, message.value, message.timestamp)
        await self.steps.head.submit(incoming)

    def discard(self) -> None:
        """Drop the open batch unwritten (as a crash would)."""
        self.steps.reduce.take()

    async def write(self) -> Batch:
        """Insert the open batch (raises if the insert fails) and start a new one."""
        batch = self.steps.reduce.take()
        assert await self.steps.write.write(batch), "the insert failed"
        return batch

    def commit(self, batch: Batch) -> None:
        """What committing a written batch does to /metrics (consumers.steps.Commit)."""
        self.consumer.metrics.apply(batch.tally())


@contextlib.asynccontextmanager
async def running_consumer(
    settings: Settings, store: Store
) -> AsyncIterator[tuple[Consumer, asyncio.Task[None]]]:
    """A started Consumer and the task running it (several may share one Store: chDB allows
    one engine per process); stopped on the way out, writing and committing what it holds."""
    engine = Consumer(settings, store)
    await engine.start()
    task = asyncio.create_task(engine.run())
    try:
        yield engine, task
    finally:
        engine.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def run_pipeline(
    settings: Settings, *, ingest: bool = True, consumer: bool = True
) -> AsyncIterator[Pipeline]:
    """Start ingest (optional), the consumer (optional) and the consumer API; stop them all."""
    servers: list[Served] = []
    store = Store.from_settings(settings)
    engine: Consumer | None = None
    run_task: asyncio.Task[None] | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            await ensure_topics(settings)
            await store.migrate(settings)
            ingest_url = ""
            if ingest:
                servers.append(await start_ingest(settings))
                ingest_url = servers[-1].url
            if consumer:
                engine, run_task = await stack.enter_async_context(
                    running_consumer(settings, store)
                )
            api = create_api(settings, store, consumer=engine)
            servers.append(await start_server(api, lifespan="off"))
            yield Pipeline(settings, store, engine, ingest_url, servers[-1].url, run_task)
    finally:
        for served in reversed(servers):
            with contextlib.suppress(Exception):
                await served.stop(10)
        await store.close()
