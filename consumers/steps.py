"""The consumer's steps, each behind one interface, chained by `build_steps`:

    Kafka message -> Decode -> Deduplicate -> Classify -> Reduce -> Write -> Commit
                       \\-> dead-letter topic (with limits) <-/

Modelled on getsentry/arroyo's strategies (processing/strategies/abstract.py): every step has
`submit(message)`, `poll()`, `join()` and `close()`, and hands what it makes to the next step's
`submit`. A step that cannot take a message now raises `MessageRejected` *before* doing anything
with it (backpressure: only `Reduce` does, when its batch is full and `Write` still busy); the
step before it keeps what it made and hands it over on a later `poll`, rejecting new messages
meanwhile, so the engine (consumers/consumer.py) keeps the Kafka message, pauses the partitions
and never sleeps. `join` pushes everything held through to the end (a rebalance, a shutdown).
A batch is committed only after its insert returned; invalid input goes to the dead-letter
topic under a limit. The steps know nothing of Kafka's client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka.errors import CommitFailedError, KafkaError

from consumers import storage
from consumers.batch import Batch, Labels, Part, TopicPartition
from consumers.classify import Classifier, ClassifyError
from consumers.decode import (
    Block,
    DeadLetterReason,
    ReceivedWindow,
    Rejected,
    dead_letter_value,
    decode,
)
from consumers.dedup import Progress, RecentIds, counted_on_replay
from consumers.metrics import BatchCounts, ConsumerMetrics, fold_labels
from consumers.store import Store, StoreError
from consumers.timings import Timings
from pinwatch.logs import event
from pinwatch.record import ROW_INDEX
from pinwatch.settings import Settings
from pinwatch.vocabulary import OTHER, Kind

log = logging.getLogger("pinwatch.consumer")

T = TypeVar("T")
PIN_VALIDATION = Kind.PIN_VALIDATION.value


class MessageRejected(Exception):  # noqa: N818 - arroyo's name for it
    """The step cannot take this message now; offer it again later."""


class Step(Generic[T]):
    """One step of the chain: takes `T`s, hands its output to the next step."""

    async def submit(self, message: T) -> None:
        raise NotImplementedError

    async def poll(self) -> None:
        """Periodic work (hand over what waited, a batch that aged); called by the engine."""

    async def join(self) -> None:
        """Push everything held through to the end of the chain."""

    def close(self) -> None:
        """Forget what is held (a rebalance took the partitions; they will be read again)."""


class Forward(Step[T]):
    """A step that makes one output per message and hands it to `next`, keeping it while
    `next` rejects it (and rejecting new messages meanwhile)."""

    def __init__(self, next_step: Step[Any]) -> None:
        self.next = next_step
        self._carried: Any = None

    async def submit(self, message: T) -> None:
        if self._carried is not None:
            await self._hand_over()
            if self._carried is not None:
                raise MessageRejected
        out = await self.process(message)
        if out is not None:
            self._carried = out
            await self._hand_over()

    async def process(self, message: T) -> Any:
        raise NotImplementedError

    async def _hand_over(self) -> None:
        try:
            await self.next.submit(self._carried)
        except MessageRejected:
            return
        self._carried = None

    async def poll(self) -> None:
        if self._carried is not None:
            await self._hand_over()
        await self.next.poll()

    async def join(self) -> None:
        if self._carried is not None:
            await self.next.join()  # empties what rejected it
            await self._hand_over()
        await self.next.join()

    def close(self) -> None:
        self._carried = None
        self.next.close()


@dataclass(slots=True)
class Incoming:
    """A Kafka message as the chain sees it (aiokafka's ConsumerRecord, reduced)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int = 0


@dataclass(slots=True)
class Decoded:
    origin: tuple[str, int, int]
    timestamp: int
    nbytes: int
    block: Block
    store: bool = True
    duplicates: int = 0


# --- dead letters ------------------------------------------------------------------------------


class DeadLetterLimitExceeded(RuntimeError):
    """Too much is going to the dead-letter topic: something is broken, stop and say so."""


class DeadLetters:
    """Sends rejected records to the dead-letter topic (reason and origin in headers) and stops
    the consumer when, within one window, more than `dead_letter_max_ratio` of the records were
    dead-lettered and at least `dead_letter_min_records` of them."""

    def __init__(
        self,
        send: Callable[[str, bytes, list[tuple[str, bytes]]], Awaitable[Any]],
        settings: Settings,
        metrics: ConsumerMetrics,
    ) -> None:
        self.sender = send
        self.topic = settings.kafka_dead_letter_topic
        self.max_ratio = settings.dead_letter_max_ratio
        self.min_records = settings.dead_letter_min_records
        self.window = settings.dead_letter_window_seconds
        self.metrics = metrics
        self._window_start = time.monotonic()
        self._seen = 0
        self._dead = 0

    def _roll(self) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.window:
            self._window_start, self._seen, self._dead = now, 0, 0

    def observe(self, records: int) -> None:
        self._roll()
        self._seen += records

    async def send(self, rejected: Rejected, origin: tuple[str, int, int]) -> None:
        topic, partition, offset = origin
        headers = [
            ("pinwatch-reason", rejected.reason.encode()),
            ("pinwatch-detail", rejected.detail[:1000].encode()),
            ("pinwatch-source", f"{topic}/{partition}/{offset}".encode()),
        ]
        if rejected.index is not None:
            headers.append(("pinwatch-record-index", str(rejected.index).encode()))
        await self.sender(self.topic, rejected.value, headers)
        self.metrics.dead_lettered.labels(reason=rejected.reason).inc()
        event(
            log,
            "dead_lettered",
            logging.WARNING,
            reason=rejected.reason,
            detail=rejected.detail[:200],
            source=f"{topic}/{partition}/{offset}",
        )
        self._roll()
        self._dead += 1
        if self._dead >= self.min_records and self._dead > self.max_ratio * max(self._seen, 1):
            raise DeadLetterLimitExceeded(
                f"{self._dead} of {self._seen} records in the last {self.window:.0f}s went to "
                f"{self.topic} (limit: more than {self.max_ratio:.0%} once at least "
                f"{self.min_records}); last reason {rejected.reason}: {rejected.detail[:200]}"
            )


# --- decode ------------------------------------------------------------------------------------


class Decode(Forward[Incoming]):
    """A Kafka message into a block of valid reports; the invalid ones (and reports outside the
    received-time window) to the dead-letter topic."""

    def __init__(
        self,
        next_step: Step[Decoded],
        dead_letters: DeadLetters,
        window: ReceivedWindow,
        timings: Timings,
    ) -> None:
        super().__init__(next_step)
        self.dead_letters = dead_letters
        self.window = window
        self.timings = timings

    async def process(self, message: Incoming) -> Decoded:
        origin = (message.topic, message.partition, message.offset)
        with self.timings.measure("decode"):
            block, rejected = decode(message.value)
            block, outside = self.window.split(block, int(time.time() * 1000))
        rejected.extend(outside)
        self.dead_letters.observe(len(block) + len(rejected))
        for bad in rejected:
            await self.dead_letters.send(bad, origin)
        self.timings.count(len(block))
        return Decoded(origin, message.timestamp, len(message.value or b""), block)


# --- deduplicate -------------------------------------------------------------------------------


class Deduplicate(Forward[Decoded]):
    """Client retries this process remembers out (the writer asks ClickHouse about the rest);
    a message already stored by a consumer that crashed is counted, not stored again."""

    def __init__(
        self,
        next_step: Step[Decoded],
        progress: Progress,
        recent: RecentIds,
        classifies: Callable[[Any], bool],
        timings: Timings,
    ) -> None:
        super().__init__(next_step)
        self.progress = progress
        self.recent = recent
        self.classifies = classifies
        self.timings = timings

    async def process(self, message: Decoded) -> Decoded:
        topic, partition, offset = message.origin
        # Before the first message of a partition: what is already stored (see Progress), and
        # the ids stored lately when this consumer owns the whole topic (see RecentIds).
        await self.progress.ensure(topic, partition)
        await self.recent.ensure_loaded(message.block)
        replayed = None
        if self.progress.is_stored(topic, partition, offset):
            replayed = await self.progress.replayed(
                message.origin, message.block, self.classifies, self.recent
            )
        with self.timings.measure("dedup"):
            if replayed is None:
                block, duplicates = self.recent.fresh(message.block)
            else:  # already stored by a consumer that crashed: count it as that one would have
                self.recent.remember(message.block)
                block, duplicates = counted_on_replay(message.block, replayed, self.classifies)
        message.block, message.store, message.duplicates = block, replayed is None, duplicates
        return message


# --- classify ----------------------------------------------------------------------------------

_MEMO_SIZE = 65_536


class Classify(Forward[Decoded]):
    """Classifies each profile of a message once (consumers/classify.py) with the metric labels
    its reports count under, and samples evidence (full chains / raw payloads) per host, leaf
    pin and hour. A report whose profile does not classify goes to the dead-letter topic."""

    def __init__(
        self,
        next_step: Step[tuple[Decoded, Part]],
        classifier: Classifier,
        metrics: ConsumerMetrics,
        evidence_per_key: int,
        dead_letters: DeadLetters,
        timings: Timings,
    ) -> None:
        super().__init__(next_step)
        self.classifier = classifier
        self.versions = metrics.versions
        self.apps = frozenset(classifier.policy.app_ids)
        self.evidence_per_key = evidence_per_key
        self.dead_letters = dead_letters
        self.timings = timings
        self._evidence_seen: dict[tuple[str, str, int], int] = {}
        self._evidence_hour = 0
        self._memo: dict[Any, Labels] = {}
        self._generation = self.versions.generation

    async def process(self, message: Decoded) -> tuple[Decoded, Part]:
        block = message.block
        with self.timings.measure("classify"):
            labels: list[Any] = []
            failed: dict[int, str] = {}
            for code, profile in enumerate(block.profiles):
                try:
                    labels.append(self.labels(profile))
                except Exception as exc:  # noqa: BLE001 - a record never stops the consumer
                    labels.append(None)
                    failed[code] = self._failure(exc, message.origin)
        if failed:
            keep = [code not in failed for code in block.profile]
            for row, code in enumerate(block.profile):
                if code in failed:
                    value = dead_letter_value(block.record(row))
                    bad = Rejected(
                        DeadLetterReason.UNCLASSIFIABLE_RECORD,
                        failed[code],
                        value,
                        block.index[row],
                    )
                    await self.dead_letters.send(bad, message.origin)
            block = block.take(keep)
        part = Part(message.origin, block, labels, message.store)
        if message.store and self.evidence_per_key:
            with self.timings.measure("classify"):
                self._sample(part)
        return message, part

    def _failure(self, exc: Exception, origin: tuple[str, int, int]) -> str:
        if isinstance(exc, ClassifyError):
            return str(exc)
        # a defect of ours a record exposed: dead-letter it, and say so loudly
        detail = f"{type(exc).__name__}: {exc}"
        log.exception(
            "record_failed_classification",
            extra={"detail": detail[:300], "source": f"{origin[0]}/{origin[1]}"},
        )
        return detail

    def classifies(self, profile: Any) -> bool:
        """Would a report of this profile be stored (rather than dead-lettered)?"""
        try:
            self.labels(profile)
        except Exception:  # noqa: BLE001 - the step dead-letters for any exception too
            return False
        return True

    def labels(self, profile: Any) -> Labels:
        if self.versions.generation != self._generation:  # an app version lost its label
            self._memo.clear()
            self._generation = self.versions.generation
        found = self._memo.get(profile)
        if found is None:
            found = self._classify(profile)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[profile] = found
        return found

    def _classify(self, p: Any) -> Labels:
        c = self.classifier.classify_fields(
            p.host, p.kind, p.result, p.enforced, p.served_chain, p.observed_pins
        )
        app, host, platform = fold_labels(p.app_id, c.policy_host, p.platform, self.apps)
        if p.kind == PIN_VALIDATION:
            key = (
                app,
                host,
                platform,
                self.versions.label(p.app_id, p.app_version),
                p.result or "",
                c.pin_match or "unknown",
                "true" if c.enforced else "false",
                c.cause or "none",
            )
            return c, key, True
        return c, (app, host, platform, p.error or OTHER), False

    def _sample(self, part: Part) -> None:
        """Evidence rows of this part, into `part.evidence`."""
        block = part.block
        wanted = {
            code
            for code, profile in enumerate(block.profiles)
            if part.labels[code] is not None and (profile.served_chain or profile.raw)
        }
        if not wanted or not len(block):
            return
        first, last = (at // 3_600_000 for at in block.span())
        seen = self._evidence_seen
        if first == last == self._evidence_hour and all(
            seen.get((block.profiles[c].host, part.labels[c][0].leaf_pin, first), 0)
            >= self.evidence_per_key
            for c in wanted
        ):
            return  # every key of this hour has its samples: nothing to look at per report
        ids, received = block.ids, block.received
        networks = block.column(ROW_INDEX["client_network"])
        for row, code in enumerate(block.profile):
            if code not in wanted:
                continue
            r = block.profiles[code]
            c = part.labels[code][0]
            at = received[row]
            hour = at // 3_600_000
            if hour != self._evidence_hour:  # a new hour: earlier keys can never be hit again
                seen.clear()
                self._evidence_hour = hour
            key = (r.host, c.leaf_pin, hour)
            n = seen.get(key, 0)
            if n >= self.evidence_per_key or len(seen) > 100_000:
                continue
            seen[key] = n + 1
            part.evidence.append(
                (
                    hour * 3600,
                    r.host,
                    c.leaf_pin,
                    ids[row],
                    at,
                    r.app_id,
                    r.app_version,
                    r.platform,
                    r.format,
                    r.result or "",
                    c.pin_match,
                    c.cause,
                    networks[row],
                    r.observed_pins,
                    r.served_chain,
                    r.raw,
                )
            )


# --- reduce: batches by rows, bytes and age ----------------------------------------------------


class Reduce(Step[tuple[Decoded, Part]]):
    """Gathers parts into a batch until `batch_max_rows`, `batch_max_bytes` or
    `batch_max_seconds`, then hands the batch to `next` (Write). A full batch that Write cannot
    take yet rejects further messages (arroyo's Reduce with backpressure)."""

    def __init__(self, next_step: Step[Batch], settings: Settings, timings: Timings) -> None:
        self.next = next_step
        self.timings = timings
        self.max_rows = settings.batch_max_rows
        self.max_bytes = settings.batch_max_bytes
        self.max_seconds = settings.batch_max_seconds
        self.batch = Batch()

    @property
    def full(self) -> bool:
        return self.batch.rows >= self.max_rows or self.batch.nbytes >= self.max_bytes

    async def submit(self, message: tuple[Decoded, Part]) -> None:
        if self.full:
            await self._hand_over()
            if self.full:
                raise MessageRejected
        decoded, part = message
        batch = self.batch
        batch.add_message(decoded.origin, decoded.timestamp, decoded.nbytes, time.monotonic())
        batch.duplicates += decoded.duplicates
        batch.add(part)
        if self.full:
            await self._hand_over()

    async def _hand_over(self) -> None:
        if self.batch.empty:
            return
        if self.batch.table is None or self.batch.counts is None:
            # The batch is complete: its columns and counts are built now, on the event loop,
            # while the insert before it (if any) runs, rather than on the next insert's path.
            with self.timings.measure("columns"):
                if self.batch.rows:
                    self.batch.reports_table()
                self.batch.tally()
        try:
            await self.next.submit(self.batch)
        except MessageRejected:
            return
        self.batch = Batch()

    async def poll(self) -> None:
        batch = self.batch
        if not batch.empty and (self.full or time.monotonic() - batch.started >= self.max_seconds):
            await self._hand_over()
        await self.next.poll()

    async def join(self) -> None:
        await self.next.join()  # the insert in flight first: then Write takes this batch
        await self._hand_over()
        await self.next.join()

    def take(self) -> Batch:
        """The open batch, replaced by an empty one (a test writes it by hand)."""
        batch, self.batch = self.batch, Batch()
        return batch

    def close(self) -> None:
        self.batch = Batch()
        self.next.close()


# --- write -------------------------------------------------------------------------------------


class Write(Step[Batch]):
    """Inserts one batch at a time, off the event loop, while the next one fills: `reports`
    (its views follow) then sampled `evidence`. Retries with bounded exponential backoff until
    it succeeds or the consumer stops; `on_trouble(True)` while failing, so the engine keeps
    partitions paused and reports it. A written batch goes on to `next` (Commit)."""

    def __init__(
        self,
        next_step: Step[Batch],
        store: Store,
        metrics: ConsumerMetrics,
        retry_max_seconds: float,
        on_trouble: Callable[[bool], None],
        recent: RecentIds | None,
        timings: Timings,
        max_days: int = 100,
    ) -> None:
        self.next = next_step
        self.store = store
        self.metrics = metrics
        self.recent = recent
        self.timings = timings
        # Every table is partitioned by day; a batch of valid records spans at most `max_days`
        # (consumers.decode.ReceivedWindow), which may be more than ClickHouse's default 100.
        self._partitions = {"max_partitions_per_insert_block": max(100, max_days)}
        self.retry_max = retry_max_seconds
        self.on_trouble = on_trouble
        self.stopping = False
        self.task: asyncio.Task[bool] | None = None
        self._writing: Batch | None = None

    @property
    def busy(self) -> bool:
        return self.task is not None

    async def submit(self, message: Batch) -> None:
        await self._collect()
        if self.task is not None:
            raise MessageRejected
        self._writing = message
        self.task = asyncio.create_task(self.write(message))

    async def _collect(self, wait: bool = False) -> None:
        task = self.task
        if task is None or not (wait or task.done()):
            return
        self.task = None
        batch, self._writing = self._writing, None
        if await task and batch is not None:
            await self.next.submit(batch)

    async def poll(self) -> None:
        await self._collect()
        await self.next.poll()

    async def join(self) -> None:
        await self._collect(wait=True)
        await self.next.join()

    def close(self) -> None:
        self.next.close()

    async def write(self, batch: Batch) -> bool:
        """True once stored; False only when asked to stop while ClickHouse was failing."""
        if not batch.rows:
            return True
        token = batch.token()
        table = None
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                if table is None:
                    # Once per batch, before the first attempt: a retried attempt whose
                    # predecessor did store the rows must not find them and drop them.
                    if self.recent is not None:
                        with self.timings.measure("lookup", thread=False):
                            batch.drop_stored(await self.recent.stored(batch))
                        if not batch.rows:
                            self.on_trouble(False)
                            return True
                    with self.timings.measure("columns"):
                        table = batch.reports_table()
                with self.timings.measure("insert", thread=False):
                    await storage.insert_reports(self.store, table, token, self._partitions)
                if batch.evidence:
                    with self.timings.measure("evidence", thread=False):
                        await storage.insert_evidence(
                            self.store, batch.evidence, token, self._partitions
                        )
            except StoreError as exc:
                self.metrics.insert_errors.inc()
                self.on_trouble(True)
                event(
                    log,
                    "insert_failed",
                    logging.WARNING,
                    attempt=attempt,
                    rows=batch.rows,
                    retry_in=round(delay, 2),
                    error=str(exc)[:300],
                )
                if self.stopping:
                    return False
                await asyncio.sleep(delay)  # retry backoff; consumption is paused meanwhile
                delay = min(delay * 2, self.retry_max)
                continue
            self.metrics.insert_seconds.observe(time.perf_counter() - started)
            self.metrics.last_insert.set(time.time())
            if attempt > 1:
                event(log, "insert_recovered", attempts=attempt, rows=batch.rows)
            self.on_trouble(False)
            return True


# --- commit ------------------------------------------------------------------------------------


class Commit(Step[Batch]):
    """Commits the offsets of written batches at most every `interval` seconds, and only then
    applies their metric counts. The engine calls `commit()` outside its lock (a commit may
    wait for a rebalance, whose callback takes the lock); `join` commits at once."""

    def __init__(
        self,
        commit: Callable[[dict[TopicPartition, int]], Awaitable[None]],
        metrics: ConsumerMetrics,
        interval: float,
    ) -> None:
        self._commit = commit
        self.metrics = metrics
        self.interval = interval
        self._offsets: dict[TopicPartition, int] = {}
        self._counts = BatchCounts()
        self._last = time.monotonic()  # the interval counts from the start too
        self.committed: dict[TopicPartition, int] = {}

    @property
    def pending(self) -> bool:
        return bool(self._offsets)

    async def submit(self, message: Batch) -> None:
        self._offsets.update(message.commit_offsets())
        self._counts.merge(message.tally())

    async def join(self) -> None:
        await self.commit(force=True)

    def close(self) -> None:
        self._offsets, self._counts = {}, BatchCounts()

    async def commit(self, force: bool = False) -> None:
        if not self._offsets:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        offsets, counts = self._offsets, self._counts
        self._offsets, self._counts = {}, BatchCounts()
        self._last = now
        try:
            await self._commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced: these partitions are someone else's now, and that consumer
            # counts (and, thanks to kafka_progress, does not re-insert) what we could not commit.
            event(log, "commit_rejected", logging.WARNING, error=str(exc)[:300])
            return
        except KafkaError as exc:
            # Transient (coordinator moving, broker restarting): keep both for the next attempt,
            # so nothing is left uncounted; a later commit covers these offsets too.
            for tp, offset in offsets.items():
                self._offsets.setdefault(tp, offset)
            counts.merge(self._counts)
            self._counts = counts
            event(log, "commit_failed", logging.WARNING, error=str(exc)[:300])
            return
        # No await between the commit returning and the count: a scrape sees both or neither.
        self.metrics.apply(counts)
        self.committed.update(offsets)


# --- the chain ---------------------------------------------------------------------------------


@dataclass
class Steps:
    """The assembled chain; `head` takes Kafka messages. The others are named for the engine
    (backpressure, commits, shutdown) and for tests that drive the steps by hand."""

    head: Step[Incoming]
    progress: Progress
    recent: RecentIds
    classify: Classify
    reduce: Reduce
    write: Write
    commit: Commit
    dead_letters: DeadLetters
    timings: Timings


def build_steps(
    settings: Settings,
    store: Store,
    metrics: ConsumerMetrics,
    classifier: Classifier,
    *,
    send_dead_letter: Callable[[str, bytes, list[tuple[str, bytes]]], Awaitable[Any]],
    commit: Callable[[dict[TopicPartition, int]], Awaitable[None]],
    on_trouble: Callable[[bool], None],
    timings: Timings | None = None,
) -> Steps:
    """The one place the chain is composed (as snuba's strategy factory)."""
    timings = timings or Timings(enabled=False)
    window = ReceivedWindow.from_settings(settings)
    recent = RecentIds(
        store, settings.dedup_window_seconds, settings.dedup_max_ids, metrics.retry_lookups
    )
    dead_letters = DeadLetters(send_dead_letter, settings, metrics)
    committer = Commit(commit, metrics, settings.commit_interval_seconds)
    write = Write(
        committer,
        store,
        metrics,
        settings.clickhouse_retry_max_seconds,
        on_trouble,
        recent,
        timings,
        max_days=window.days,
    )
    reduce = Reduce(write, settings, timings)
    classify = Classify(
        reduce, classifier, metrics, settings.evidence_per_pin_hour, dead_letters, timings
    )
    progress = Progress(store)
    dedup = Deduplicate(classify, progress, recent, classify.classifies, timings)
    head = Decode(dedup, dead_letters, window, timings)
    return Steps(head, progress, recent, classify, reduce, write, committer, dead_letters, timings)
