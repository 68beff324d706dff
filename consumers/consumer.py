"""The consumer engine: an aiokafka consumer group feeding the chain of consumers/steps.py.

    Kafka --getmany--> Decode -> Deduplicate -> Classify -> Reduce --(full or aged)--> Write
                          \\-> dead-letter topic (with limits)                          -> Commit

The chain is composed in one place (`consumers.steps.build_steps`); this module only moves
Kafka messages into it, pauses and resumes partitions, and handles rebalances. One insert runs
at a time, off the event loop, while the next batch fills. A message the chain rejects (a full
batch with the writer still busy) waits, and every assigned partition is paused, as it is while
ClickHouse fails (backpressure without sleeping); `getmany` keeps being called, so the group
membership stays alive. Offsets are committed after the insert returned, at most every
`commit_interval_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import TopicPartition

from consumers import storage
from consumers.classify import Classifier
from consumers.failing import read_failing
from consumers.metrics import ConsumerMetrics
from consumers.steps import (
    DeadLetterLimitExceeded,
    Incoming,
    MessageRejected,
    Steps,
    build_steps,
)
from consumers.store import Store, StoreError
from consumers.timings import Timings
from pinwatch.kafka import client_args, start_client
from pinwatch.logs import event
from pinwatch.policy import Policy, load_policy
from pinwatch.roots import PublicRoots
from pinwatch.settings import Settings
from pinwatch.topics import ensure_topics

log = logging.getLogger("pinwatch.consumer")

_POLL_MS = 100
_MAX_POLL_RECORDS = 500  # Kafka messages per getmany; each carries up to max_reports_per_batch
# Per partition and fetch: 1 MiB, not 8: the first batch is decoded sooner (the first insert
# started at 0.07-0.10 s instead of 0.14 s into benchmarks/bench_consumer.py), the next batch
# fills during the first insert, and fetching costs less (0.22-0.25 against 0.29-0.30 us a
# report). Kafka still returns a larger message whole.
_PARTITION_FETCH_BYTES = 1024 * 1024


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, engine: Consumer) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.engine._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.engine._on_assigned(list(assigned))


class Consumer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: ConsumerMetrics | None = None,
        *,
        policy: Policy | None = None,
        roots: PublicRoots | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or ConsumerMetrics(settings.metrics_max_app_versions)
        self.policy = policy or load_policy(settings.policy_file)
        roots = roots or PublicRoots.load(settings.public_roots_file)
        self.classifier = Classifier(self.policy, roots)
        self.timings = Timings(enabled=False)  # benchmarks/bench_consumer.py turns it on
        self.steps: Steps = build_steps(
            settings,
            store,
            self.metrics,
            self.classifier,
            send_dead_letter=self._send_dead_letter,
            commit=self._commit,
            on_trouble=self._set_trouble,
            timings=self.timings,
        )
        self._kafka: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._pending: deque[Incoming] = deque()
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._trouble = False
        self._paused = False
        self._position: dict[tuple[str, int], int] = {}
        self._last_lag = 0.0
        self._refresher: asyncio.Task[None] | None = None
        self.started = False
        self.fatal: str | None = None  # why the consumer stopped by itself

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        await ensure_topics(s)
        await self._seed_versions()
        self._producer = AIOKafkaProducer(**client_args(s), acks="all")
        await start_client(self._producer, s, "the consumer's dead-letter producer")
        self._kafka = AIOKafkaConsumer(
            **client_args(s),
            group_id=s.kafka_consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=_PARTITION_FETCH_BYTES,
            fetch_max_bytes=32 * 1024 * 1024,
            # Partitions added to the topic (`pinwatch topics --partitions`) are seen, and the
            # group rebalanced onto them, at the next metadata refresh.
            metadata_max_age_ms=int(s.kafka_metadata_max_age_seconds * 1000),
        )
        try:
            await start_client(self._kafka, s, "the consumer")
        except BaseException:
            await self._producer.stop()
            raise
        self._kafka.subscribe([s.kafka_topic], listener=_Rebalance(self))
        self._refresher = asyncio.create_task(self._refresh_failing())
        self.started = True
        event(log, "consumer_started", topic=s.kafka_topic, group=s.kafka_consumer_group)

    def stop(self) -> None:
        """Ask `run` to finish: it writes and commits what it holds, then returns."""
        self._stop.set()

    @property
    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this consumer owns right now."""
        if self._kafka is None:
            return []
        return sorted((tp.topic, tp.partition) for tp in self._kafka.assignment())

    @property
    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset to handle per (topic, partition) this consumer has handled messages of
        (handled: in a batch, not necessarily inserted or committed yet)."""
        return dict(self._position)

    @property
    def ready(self) -> bool:
        return self.started and self.fatal is None and not self._trouble

    async def run(self) -> None:
        """Consume until `stop()`; raises DeadLetterLimitExceeded after a clean shutdown."""
        assert self._kafka is not None
        steps = self.steps
        try:
            while not self._stop.is_set():
                # Fetched messages wait in `_pending` while the chain rejects them (arroyo's
                # MessageRejected); partitions are paused meanwhile, and getmany is still
                # called (returning nothing) so the group sees this member polling.
                with self.timings.measure("fetch"):
                    # With messages pending, the chain waited for the writer (below) and may
                    # take them now: no wait here (paused partitions would return nothing
                    # only after the whole timeout, and the next insert would start that late).
                    chunks = await self._kafka.getmany(
                        timeout_ms=_POLL_MS if not self._pending else 0,
                        max_records=_MAX_POLL_RECORDS,
                    )
                    for tp, messages in chunks.items():
                        self._pending.extend(
                            Incoming(tp.topic, tp.partition, m.offset, m.value, m.timestamp)
                            for m in messages
                        )
                async with self._lock:
                    await self._feed()
                    await steps.head.poll()
                    self._set_paused(self._trouble or bool(self._pending))
                if steps.write.task is not None and (self._pending or steps.reduce.full):
                    # Blocked on the writer (a message waits, or the next batch is full): wake
                    # when it finishes, rather than spin or sit in getmany meanwhile, so the
                    # next insert starts at once (aiokafka keeps fetching in the background).
                    await asyncio.wait({steps.write.task}, timeout=_POLL_MS / 1000)
                # Outside the lock: a commit may wait on a rebalance, whose revoke callback
                # takes the lock to drain.
                await steps.commit.commit()
                self._update_lag()
        except DeadLetterLimitExceeded as exc:
            self.fatal = str(exc)
            event(log, "consumer_stopping", logging.ERROR, reason=self.fatal)
            # Reports of the message being handled may be half in the batch: never insert
            # the open batch.
            steps.reduce.take()
            raise
        finally:
            await self._shutdown()

    async def _feed(self) -> None:
        """Hand pending messages to the chain until it rejects one."""
        head, write = self.steps.head, self.steps.write
        while self._pending:
            message = self._pending[0]
            writing = write.task
            try:
                await head.submit(message)
            except MessageRejected:
                return
            self._pending.popleft()
            self._position[(message.topic, message.partition)] = message.offset + 1
            if write.task is not writing:
                # A batch was handed over: let its insert start now, not after every pending
                # message is decoded (tens of ms).
                await asyncio.sleep(0)

    async def _shutdown(self) -> None:
        self.steps.write.stopping = True
        with contextlib.suppress(Exception):
            await self._drain(write_open_batch=self.fatal is None)
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refresher
        if self._kafka is not None:
            with contextlib.suppress(Exception):
                await self._kafka.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        self.started = False
        event(log, "consumer_stopped", reason=self.fatal or "asked")

    async def _drain(self, write_open_batch: bool) -> None:
        """Finish the insert in flight, insert the open batch (unless told not to: the dead
        letter limit stopped the consumer in the middle of a message), commit what was written."""
        if write_open_batch:
            await self.steps.head.join()
        else:
            await self.steps.write.join()

    # --- Kafka plumbing --------------------------------------------------------------------------

    async def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        assert self._kafka is not None
        await self._kafka.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})

    async def _send_dead_letter(self, topic: str, value: bytes, headers: list[Any]) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(topic, value, headers=headers)

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        if not self.started:
            return
        async with self._lock:
            try:
                await self._drain(write_open_batch=True)
            finally:
                self.steps.head.close()
                # Every partition restarts from its committed offset after a rebalance (eager
                # protocol), so fetched-but-unhandled messages will come again.
                self._pending.clear()
                keys = [(tp.topic, tp.partition) for tp in revoked]
                self.steps.progress.forget(keys)
                for key in keys:
                    self._position.pop(key, None)
                    with contextlib.suppress(KeyError):
                        self.metrics.lag.remove(key[0], str(key[1]))
        event(log, "partitions_revoked", partitions=[tp.partition for tp in revoked])

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        self.steps.progress.forget([(tp.topic, tp.partition) for tp in assigned])
        # Owning every partition of the topic, this consumer is the only one inserting: its
        # memory of ids, loaded now, stays complete (consumers.dedup.RecentIds).
        topic = self.settings.kafka_topic
        every = self._kafka.partitions_for_topic(topic) if self._kafka is not None else None
        mine = {tp.partition for tp in assigned if tp.topic == topic}
        self.steps.recent.reset(exclusive=bool(every) and mine >= set(every or ()))
        self._paused = False
        self.metrics.paused.set(1 if self._trouble else 0)
        event(log, "partitions_assigned", partitions=[tp.partition for tp in assigned])

    def _set_paused(self, paused: bool) -> None:
        assert self._kafka is not None
        if paused == self._paused:
            return
        assignment = list(self._kafka.assignment())
        if paused:
            self._kafka.pause(*assignment)
        else:
            self._kafka.resume(*assignment)
        self._paused = paused
        self.metrics.paused.set(1 if paused else 0)
        event(log, "consumption_paused" if paused else "consumption_resumed", trouble=self._trouble)

    def _set_trouble(self, trouble: bool) -> None:
        self._trouble = trouble
        if trouble and self._kafka is not None:
            self._set_paused(True)

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < 1.0 or self._kafka is None:
            return
        self._last_lag = now
        for tp in self._kafka.assignment():
            end = self._kafka.highwater(tp)
            if end is None:
                continue
            position = self._position.get((tp.topic, tp.partition))
            if position is None:
                position = self.steps.commit.committed.get((tp.topic, tp.partition), end)
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - position))

    # --- ClickHouse reads ------------------------------------------------------------------------

    async def _seed_versions(self) -> None:
        try:
            pairs = await storage.recent_versions(self.store)
        except StoreError as exc:
            event(log, "version_seed_failed", logging.WARNING, error=str(exc)[:200])
            return
        self.metrics.versions.seed(pairs)

    async def refresh_failing(self) -> None:
        rows = await read_failing(self.store, frozenset(self.policy.app_ids), self.metrics.versions)
        self.metrics.set_failing(rows)

    async def _refresh_failing(self) -> None:
        while True:
            try:
                await self.refresh_failing()
            except StoreError as exc:
                event(log, "failing_refresh_failed", logging.WARNING, error=str(exc)[:200])
            await asyncio.sleep(self.settings.failing_refresh_seconds)
