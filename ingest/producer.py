"""Getting records onto Kafka, and knowing when they are there.

How records map to messages (measured in benchmarks/bench_ingest.py): aiokafka spends tens of
microseconds of Python per message, so one message per report caps ingest at a few thousand
reports/s. `KafkaSink` therefore coalesces: every request's records join a per-partition buffer,
and a single flusher task turns whatever accumulated into as few messages as fit under
`kafka_max_message_bytes` (each value is `pinwatch.record.encode_batch(records)`, the columnar
envelope, encoded once per message when it is flushed, not once per request).
A partition with a message in flight is not flushed again until Kafka answers (group commit):
under load the buffer then gathers a round trip's worth of requests instead of a few.
A request is answered only when every message holding one of its records is acknowledged
(`acks=all`, idempotent producer), or with a 503 when that takes longer than
`kafka_produce_timeout_seconds`.

Partitioning: by the record's device hash (or, without one, its client network, then its app).
A device's retries and duplicates land in one partition, so a consumer that deduplicates within
a partition sees both copies; different devices spread evenly. The message key is left empty
because one message mixes many devices.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from pinwatch.kafka import client_args, start_client
from pinwatch.logs import event
from pinwatch.record import Record, encode_batch, encoded_size_bound
from pinwatch.settings import Settings

log = logging.getLogger("pinwatch.ingest.producer")

# After a batch expires unacknowledged (broker down), aiokafka's idempotent producer keeps
# sequence numbers the broker never saw and every later batch fails like this; only a new
# producer (a new producer id) recovers.
_NEEDS_NEW_PRODUCER = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)


class ProduceFailed(Exception):
    """Kafka did not acknowledge in time (or refused): answer 503 with Retry-After.
    `reason` is the label of pinwatch_ingest_produce_errors_total."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RecordTooLarge(Exception):
    """One record alone does not fit in a Kafka message: answer 413, retrying cannot help."""


def partition_key(record: Record) -> bytes:
    # crc32, not Kafka's murmur2: the partition is chosen here (messages carry no key), and
    # aiokafka's murmur2 is pure Python, ~30 us a record.
    return (record.device or record.client_network or record.app_id).encode()


def _check_size(records: list[Record], limit: int) -> list[int]:
    """Each record's `encoded_size_bound`; raises RecordTooLarge for one that does not fit in a
    message even alone (checked by encoding it, since the bound is only an estimate)."""
    sizes = [encoded_size_bound(record) for record in records]
    for record, size in zip(records, sizes, strict=True):
        if size > limit:
            encoded = len(encode_batch([record]))
            if encoded > limit:
                raise RecordTooLarge(f"report {record.id!r} is {encoded} bytes encoded")
    return sizes


def _encode(records: list[Record], limit: int) -> list[bytes]:
    """Message values for `records`, each at most `limit` bytes: one, unless the size bounds
    were too low (multi-byte characters), when the records are split in halves."""
    value = encode_batch(records)
    if len(value) <= limit or len(records) == 1:
        return [value]
    half = len(records) // 2
    return _encode(records[:half], limit) + _encode(records[half:], limit)


@dataclass
class _Pending:
    """Records waiting for one partition's next message, and the requests waiting on them."""

    records: list[Record] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # each record's encoded_size_bound
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    size: int = 0  # the records' encoded_size_bound, summed
    # One timer per group, not per request (asyncio.timeout per request was a tenth of a
    # single-report request's cost): a request that joins later gets a little less time.
    timer: asyncio.TimerHandle | None = None


class KafkaSink:
    """The ingest side of Kafka: start/stop, `await send(records)`, readiness."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer | None = None) -> None:
        self.settings = settings
        self.topic = settings.kafka_topic
        self._external = producer is not None
        # aiokafka binds to the running loop at construction: built in start(), not here, so
        # the app can be created outside an event loop (pinwatch ingest, uvicorn factories)
        self.producer: AIOKafkaProducer = producer  # type: ignore[assignment]
        self._resetting = False
        self._partitions: list[int] = []
        self._pending: dict[int, _Pending] = {}
        self._busy: Counter[int] = Counter()  # partition -> its messages in flight
        self._pending_bytes = 0  # encoded bytes not yet acknowledged (buffered or in flight)
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Future[object]] = set()
        self.started = False
        self.last_ok = 0.0  # monotonic time Kafka last answered (metadata or an ack)

    def _new_producer(self) -> AIOKafkaProducer:
        settings = self.settings
        compression = None if settings.kafka_compression == "none" else settings.kafka_compression
        return AIOKafkaProducer(
            **client_args(settings),
            acks="all",
            enable_idempotence=True,
            compression_type=compression,
            max_request_size=settings.kafka_max_message_bytes + 65_536,
            max_batch_size=settings.kafka_max_message_bytes + 65_536,
            linger_ms=0,
            request_timeout_ms=int(max(settings.kafka_produce_timeout_seconds * 2, 10) * 1000),
            client_id="pinwatch-ingest",
        )

    async def _replace_producer(self) -> None:
        """Swap in a fresh idempotent producer (see _NEEDS_NEW_PRODUCER); once at a time."""
        if self._resetting or self._external:
            return
        self._resetting = True
        try:
            fresh = self._new_producer()
            await start_client(fresh, self.settings, "ingest's new producer")
            old, self.producer = self.producer, fresh
            event(log, "producer_replaced", topic=self.topic)
            try:
                await asyncio.wait_for(old.stop(), self.settings.kafka_produce_timeout_seconds)
            except (TimeoutError, KafkaError):
                pass  # the old producer's unacknowledged batches were already answered 503
        except (KafkaError, OSError) as exc:
            event(log, "producer_replace_failed", logging.WARNING, error=repr(exc))
        finally:
            self._resetting = False

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.producer is None:
            self.producer = self._new_producer()
        await start_client(self.producer, self.settings, "ingest's producer")
        self._partitions = sorted(await self.producer.partitions_for(self.topic))
        self.started = True
        self.last_ok = time.monotonic()
        self._flusher = asyncio.create_task(self._flush_loop(), name="pinwatch-ingest-flusher")
        self._watcher = asyncio.create_task(self._watch(), name="pinwatch-ingest-kafka-watch")
        event(log, "producer_started", topic=self.topic, partitions=len(self._partitions))

    async def stop(self) -> None:
        """Flush what is buffered, wait (bounded) for acknowledgements, close the producer."""
        if not self.started:
            return
        self.started = False
        self._drain(all_partitions=True)
        waiting = list(self._in_flight)
        if waiting:
            await asyncio.wait(waiting, timeout=self.settings.kafka_produce_timeout_seconds)
        for task in (self._flusher, self._watcher):
            if task is not None:
                task.cancel()
        try:
            await asyncio.wait_for(
                self.producer.stop(), self.settings.kafka_produce_timeout_seconds
            )
        except (TimeoutError, KafkaError) as exc:
            event(log, "producer_stop_incomplete", logging.WARNING, error=repr(exc))
        event(log, "producer_stopped", topic=self.topic)

    def ready(self) -> tuple[bool, str]:
        if not self.started:
            return False, "producer not started"
        age = time.monotonic() - self.last_ok
        if age > self.settings.ingest_ready_max_age_seconds:
            return False, f"Kafka last answered {age:.0f}s ago"
        return True, "ok"

    async def _watch(self) -> None:
        """Ask the cluster for metadata now and then: readiness means Kafka answered recently,
        and the partition list follows topic changes."""
        settings = self.settings
        interval = max(
            min(settings.ingest_ready_max_age_seconds / 3, settings.kafka_metadata_max_age_seconds),
            0.5,
        )
        while True:
            await asyncio.sleep(interval)
            try:
                # Metadata of our topic only (the producer tracks just that one): a cluster's
                # full metadata lists every topic, and decoding it cost ingest a few percent.
                client = self.producer.client
                updated = await asyncio.wait_for(client.force_metadata_update(), interval)
                if not updated:
                    raise KafkaError("no broker answered the metadata request")
                partitions = client.cluster.partitions_for_topic(self.topic)
                if partitions:
                    self._partitions = sorted(partitions)
                self.last_ok = time.monotonic()
            except (TimeoutError, KafkaError, OSError) as exc:
                event(log, "kafka_unreachable", logging.WARNING, error=repr(exc))

    # --- sending ----------------------------------------------------------------------------

    async def send(self, records: list[Record]) -> None:
        """Return once Kafka acknowledged every record; raise `ProduceFailed` otherwise."""
        if not records:
            return
        if not self.started:
            raise ProduceFailed("not_started", "the Kafka producer is not running")
        if self._pending_bytes > self.settings.ingest_max_pending_bytes:
            raise ProduceFailed("backlog", "too many records are waiting for Kafka")
        waiters = [self._enqueue(p, group) for p, group in self._by_partition(records)]
        self._wake.set()
        if len(waiters) == 1:
            await waiters[0]
            return
        try:
            await asyncio.gather(*waiters)
        except ProduceFailed:
            for waiter in waiters:
                waiter.cancel()  # the answer is a 503 already; nobody reads the others
            raise

    def _by_partition(self, records: list[Record]) -> list[tuple[int, list[Record]]]:
        partitions = self._partitions
        if len(records) == 1:  # single-report requests: the common case, kept cheap
            key = partition_key(records[0])
            return [(partitions[zlib.crc32(key) % len(partitions)], records)]
        groups: dict[int, list[Record]] = {}
        last_key: bytes | None = None
        group: list[Record] = []
        for record in records:
            key = partition_key(record)
            if key != last_key:  # a native batch is one device: hash once
                partition = partitions[zlib.crc32(key) % len(partitions)]
                group = groups.setdefault(partition, [])
                last_key = key
            group.append(record)
        return list(groups.items())

    def _enqueue(self, partition: int, group: list[Record]) -> asyncio.Future[None]:
        """Add one partition's records to its buffer; the future resolves once Kafka has them."""
        limit = self.settings.kafka_max_message_bytes
        # Encoded once per message at flush (columns need every record of it); here only an
        # upper bound of each record's size, so messages stay under the limit.
        sizes = _check_size(group, limit)
        size = sum(sizes)
        pending = self._pending.get(partition)
        if pending and pending.size + size > self.settings.kafka_max_message_bytes:
            self._drain_partition(partition)
            pending = None
        loop = asyncio.get_running_loop()
        if pending is None:
            pending = self._pending[partition] = _Pending()
            timeout = self.settings.kafka_produce_timeout_seconds
            pending.timer = loop.call_later(timeout, self._expire, partition, pending)
        waiter: asyncio.Future[None] = loop.create_future()
        pending.records.extend(group)
        pending.sizes.extend(sizes)
        pending.waiters.append(waiter)
        pending.size += size
        self._pending_bytes += size
        return waiter

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._drain()

    def _drain(self, *, all_partitions: bool = False) -> None:
        for partition in list(self._pending):
            if all_partitions or not self._busy[partition]:
                self._drain_partition(partition)

    def _drain_partition(self, partition: int) -> None:
        pending = self._pending.pop(partition, None)
        if pending is None or not pending.records:
            return
        limit = self.settings.kafka_max_message_bytes
        # Split into messages under the limit. A request's records may straddle two messages:
        # its waiter then resolves when the last of them is acknowledged.
        messages: list[list[Record]] = [[]]
        size = 0
        for record, bound in zip(pending.records, pending.sizes, strict=True):
            if messages[-1] and size + bound > limit:
                messages.append([])
                size = 0
            messages[-1].append(record)
            size += bound
        values = [value for m in messages for value in _encode(m, limit)]
        self._busy[partition] += 1
        task = asyncio.ensure_future(self._produce(partition, values, pending))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _expire(self, partition: int, pending: _Pending) -> None:
        """Answer a group's requests 503 once their time is up. A group still waiting for its
        partition (a message stuck in flight) is dropped: its requests were refused, and new
        requests must not join a group whose timer is spent."""
        if self._pending.get(partition) is pending:
            del self._pending[partition]
            self._pending_bytes -= pending.size
        timeout = self.settings.kafka_produce_timeout_seconds
        failure = ProduceFailed("timeout", f"Kafka did not acknowledge within {timeout:g}s")
        for waiter in pending.waiters:
            if not waiter.done():
                waiter.set_exception(failure)

    async def _produce(self, partition: int, values: list[bytes], pending: _Pending) -> None:
        error: BaseException | None = None
        producer = self.producer
        try:
            acks = [await producer.send(self.topic, value, partition=partition) for value in values]
            await asyncio.gather(*acks)
            self.last_ok = time.monotonic()
        except (KafkaError, OSError, AssertionError) as exc:
            error = exc
            event(log, "produce_failed", logging.WARNING, partition=partition, error=repr(exc))
            if isinstance(exc, _NEEDS_NEW_PRODUCER) and producer is self.producer:
                task = asyncio.ensure_future(self._replace_producer())
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            self._pending_bytes -= pending.size
            self._busy[partition] -= 1
            if partition in self._pending:
                self._wake.set()  # what gathered meanwhile goes next
        for waiter in pending.waiters:
            if waiter.done():
                continue  # the request already got its answer (timeout: 503)
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(ProduceFailed("kafka_error", f"Kafka refused: {error!r}"))
