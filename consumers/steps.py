"""The consumer's steps, in order: decode -> enrich (classify) -> batch -> write -> commit.

Each step is small and knows nothing of Kafka's client: the engine (consumers/consumer.py)
feeds messages in and moves batches along. Modelled on getsentry/arroyo's strategies: a batch is
committed only after its insert returned, a full batch with the writer busy is backpressure
(the engine pauses partitions), and invalid input goes to the dead-letter topic under a limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import CommitFailedError, KafkaError

from consumers.classify import Classification, Classifier, report_columns
from consumers.decode import Rejected, WireRecord
from consumers.metrics import BatchTally, ConsumerMetrics, fold_labels
from consumers.schema import (
    EVIDENCE_COLUMN_NAMES,
    EVIDENCE_COLUMN_TYPES,
    ID_DEDUP_FORMATS,
    REPORT_COLUMN_NAMES,
    REPORT_COLUMN_TYPES,
)
from consumers.store import Store, StoreError
from pinwatch.logs import event
from pinwatch.settings import Settings
from pinwatch.vocabulary import OTHER, Kind

log = logging.getLogger("pinwatch.consumer")

TopicPartition = tuple[str, int]
PIN_VALIDATION = Kind.PIN_VALIDATION.value
_EVIDENCE_ID, _EVIDENCE_APP = (
    EVIDENCE_COLUMN_NAMES.index("report_id"),
    EVIDENCE_COLUMN_NAMES.index("app_id"),
)


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
        self._send = send
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
        await self._send(self.topic, rejected.value, headers)
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


# --- enrich + batch ----------------------------------------------------------------------------


@dataclass
class Batch:
    """Rows of consecutive Kafka messages, and what committing them will count."""

    # One entry per report to insert, in step: the record, its classification, its Kafka
    # (topic, partition, offset) and the metric labels it is tallied under.
    records: list[WireRecord] = field(default_factory=list)
    classes: list[Classification] = field(default_factory=list)
    origins: list[tuple[str, int, int]] = field(default_factory=list)
    keys: list[tuple[str, ...]] = field(default_factory=list)
    evidence: list[tuple[Any, ...]] = field(default_factory=list)
    first: dict[TopicPartition, int] = field(default_factory=dict)
    last: dict[TopicPartition, int] = field(default_factory=dict)
    # Kafka timestamps of the first and last message per partition (see `token`).
    stamps: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    tally: BatchTally = field(default_factory=BatchTally)
    nbytes: int = 0
    started: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.last

    def token(self) -> str:
        """Insert deduplication token: the exact offset ranges this batch holds, and the
        timestamps of their ends. A replay after a crash has the same messages, so the same
        token; a topic deleted and created again reuses the offsets, not the timestamps (with
        offsets alone, its first batches were dropped as copies of the old topic's)."""
        spans = ",".join(
            f"{t}:{p}:{self.first[(t, p)]}-{o}@{self.stamps.get((t, p), '')}"
            for (t, p), o in sorted(self.last.items())
        )
        return hashlib.sha256(spans.encode()).hexdigest()[:40]

    def commit_offsets(self) -> dict[TopicPartition, int]:
        return {tp: offset + 1 for tp, offset in self.last.items()}

    def drop_stored(self, stored: set[tuple[str, str]]) -> int:
        """Remove the reports (and evidence) already in ClickHouse, (app_id, id) in `stored`,
        and take them out of the tally: they are client retries. Returns how many."""
        if not stored:
            return 0
        keep = [
            i
            for i, r in enumerate(self.records)
            if r.format not in ID_DEDUP_FORMATS or (r.app_id, r.id) not in stored
        ]
        tally = self.tally
        kept = set(keep)
        for i, r in enumerate(self.records):
            if i in kept:
                continue
            counter = tally.pins if r.kind == PIN_VALIDATION else tally.network
            key = self.keys[i]
            counter[key] -= r.count
            if counter[key] <= 0:
                del counter[key]
            tally.kinds[r.kind] -= 1
        dropped = len(self.records) - len(keep)
        self.records = [self.records[i] for i in keep]
        self.classes = [self.classes[i] for i in keep]
        self.origins = [self.origins[i] for i in keep]
        self.keys = [self.keys[i] for i in keep]
        self.evidence = [
            e for e in self.evidence if (e[_EVIDENCE_APP], e[_EVIDENCE_ID]) not in stored
        ]
        tally.duplicates += dropped
        return dropped


_MEMO_SIZE = 65_536


class Enricher:
    """Classifies decoded records (consumers.decode) into a batch's reports and the metric keys
    they will count under; samples evidence (full chains / raw payloads) per host, leaf pin and
    hour."""

    def __init__(
        self, classifier: Classifier, metrics: ConsumerMetrics, evidence_per_key: int
    ) -> None:
        self.classifier = classifier
        self.versions = metrics.versions
        self.apps = frozenset(classifier.policy.app_ids)
        self.evidence_per_key = evidence_per_key
        self._evidence_seen: dict[tuple[str, str, int], int] = {}
        self._evidence_hour = 0
        self._memo: dict[tuple[Any, ...], tuple[Classification, tuple[str, ...], bool]] = {}
        self._generation = self.versions.generation

    def add(self, r: WireRecord, batch: Batch, origin: tuple[str, int, int], store: bool) -> None:
        """Classify record `r` into `batch`; `store=False` counts it without inserting (already
        stored before a crash, see `Progress`). Raises ClassifyError."""
        c, key, pin = self._lookup(r)
        tally = batch.tally
        kind = r.kind
        if pin:
            tally.pins[key] += r.count
        else:
            tally.network[key] += r.count
        tally.kinds[kind] += 1
        if not store:
            return
        batch.records.append(r)
        batch.classes.append(c)
        batch.origins.append(origin)
        batch.keys.append(key)
        if (r.served_chain or r.raw) and self.evidence_per_key:
            self._sample(r, c.leaf_pin, c.pin_match, c.cause, batch)

    def classifies(self, r: WireRecord) -> bool:
        """Would `add` take this record (rather than it going to the dead-letter topic)?"""
        try:
            self._lookup(r)
        except Exception:  # noqa: BLE001 - the engine dead-letters for any exception too
            return False
        return True

    def _lookup(self, r: WireRecord) -> tuple[Classification, tuple[str, ...], bool]:
        if self.versions.generation != self._generation:  # an app version lost its label
            self._memo.clear()
            self._generation = self.versions.generation
        # Real traffic repeats a few combinations of these fields (per host, chain, outcome,
        # app version): classification and metric labels are looked up once per combination.
        memo_key = (
            r.host,
            r.kind,
            r.result,
            r.enforced,
            r.served_chain,
            r.observed_pins,
            r.app_id,
            r.app_version,
            r.platform,
            r.error,
        )
        found = self._memo.get(memo_key)
        if found is None:
            found = self._labels(r)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[memo_key] = found
        return found

    def _labels(self, r: WireRecord) -> tuple[Classification, tuple[str, ...], bool]:
        """(classification, metric labels, whether they are pin validation labels)."""
        c = self.classifier.classify_fields(
            r.host, r.kind, r.result, r.enforced, r.served_chain, r.observed_pins
        )
        app, host, platform = fold_labels(r.app_id, c.policy_host, r.platform, self.apps)
        if r.kind == PIN_VALIDATION:
            key = (
                app,
                host,
                platform,
                self.versions.label(r.app_id, r.app_version),
                r.result or "",
                c.pin_match or "unknown",
                "true" if c.enforced else "false",
                c.cause or "none",
            )
            return c, key, True
        return c, (app, host, platform, r.error or OTHER), False

    def _sample(
        self, r: WireRecord, leaf_pin: str, pin_match: str, cause: str, batch: Batch
    ) -> None:
        hour = r.received_at_ms // 3_600_000
        if hour != self._evidence_hour:  # a new hour: earlier keys can never be hit again
            self._evidence_seen.clear()
            self._evidence_hour = hour
        key = (r.host, leaf_pin, hour)
        seen = self._evidence_seen.get(key, 0)
        if seen >= self.evidence_per_key or len(self._evidence_seen) > 100_000:
            return
        self._evidence_seen[key] = seen + 1
        batch.evidence.append(
            (
                hour * 3600,
                r.host,
                leaf_pin,
                r.id,
                r.received_at_ms,
                r.app_id,
                r.app_version,
                r.platform,
                r.format,
                r.result or "",
                pin_match,
                cause,
                r.client_network,
                r.observed_pins,
                r.served_chain,
                r.raw,
            )
        )


class Progress:
    """Highest offset per partition already in ClickHouse (`kafka_progress`), read before the
    first message of a newly assigned partition is handled. Messages at or below it were
    inserted by a consumer that crashed before committing: they are counted (that consumer
    never counted them) but not inserted again, and counted as that consumer would have.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stored: dict[TopicPartition, int] = {}
        self.loaded: set[TopicPartition] = set()

    async def ensure(self, topic: str, partition: int) -> None:
        if (topic, partition) in self.loaded:
            return
        rows = await self.store.query(
            "SELECT max(max_offset), count() FROM {db}.kafka_progress "
            "WHERE kafka_topic = {topic:String} AND kafka_partition = {partition:UInt32}",
            {"topic": topic, "partition": partition},
        )
        if rows and rows[0][1]:
            self.stored[(topic, partition)] = int(rows[0][0])
        self.loaded.add((topic, partition))
        event(
            log,
            "partition_progress",
            topic=topic,
            partition=partition,
            stored_up_to=self.stored.get((topic, partition)),
        )

    def is_stored(self, topic: str, partition: int, offset: int) -> bool:
        stored = self.stored.get((topic, partition))
        return stored is not None and offset <= stored

    async def replayed(
        self,
        topic: str,
        partition: int,
        offset: int,
        records: list[WireRecord],
        enricher: Enricher,
        recent: RecentIds,
    ) -> set[tuple[str, str]] | None:
        """For a message `is_stored` says was inserted before: (app_id, id) of its records that
        have a row at this offset. None when that progress is stale: the partition's progress is
        dropped then, and the rest of the partition is inserted normally.

        `kafka_progress` alone cannot tell a replay after a crash from a topic that was deleted
        and created again (offsets restart at 0 while ClickHouse keeps the old incarnation's
        progress); the rows settle it. A message with no row at its offset is no proof of a new
        topic, though: the consumer before the crash dropped every record of it as a client
        retry (or dead-lettered it). Its progress stands when each record it would store is a
        retry of an id stored before; taking it for stale instead counted the stored messages
        after it as duplicates."""
        if not records:
            return set()
        rows = await self.store.query(
            "SELECT DISTINCT app_id, id FROM {db}.reports "
            "WHERE host IN {hosts:Array(String)} "
            "AND received_at IN "
            "(SELECT fromUnixTimestamp64Milli(arrayJoin({times:Array(Int64)}), 'UTC')) "
            "AND id IN {ids:Array(String)} AND kafka_topic = {topic:String} "
            "AND kafka_partition = {partition:UInt32} AND kafka_offset = {offset:UInt64}",
            {
                "hosts": sorted({r.host for r in records}),
                "times": sorted({r.received_at_ms for r in records}),
                "ids": [r.id for r in records],
                "topic": topic,
                "partition": partition,
                "offset": offset,
            },
        )
        found = {(str(app), str(i)) for app, i in rows}
        if found:
            return found
        storable = [r for r in records if enricher.classifies(r)]
        retries = [r for r in storable if r.format in ID_DEDUP_FORMATS]
        if len(retries) == len(storable):
            keys = {(r.app_id, r.id) for r in retries}
            if keys <= await recent.stored(retries):
                return found
        event(
            log,
            "kafka_progress_stale",
            logging.WARNING,
            topic=topic,
            partition=partition,
            offset=offset,
            stored_up_to=self.stored.get((topic, partition)),
            hint="the topic was probably recreated; inserting from here on",
        )
        self.stored.pop((topic, partition), None)
        return None

    def forget(self, tps: list[TopicPartition]) -> None:
        """Partitions (re)assigned or revoked: their progress is read again before use."""
        for tp in tps:
            self.stored.pop(tp, None)
            self.loaded.discard(tp)


def counted_on_replay(
    records: list[WireRecord], stored: set[tuple[str, str]], enricher: Enricher
) -> tuple[list[WireRecord], int]:
    """The records of a replayed message (`Progress.replayed`) to count as the consumer before
    the crash would have, and how many were client retries: a record with a row at this offset
    counts once (the first copy of its id), as does a format not deduplicated by id; a record
    that does not classify goes on (to the dead-letter topic again); the rest were retries."""
    keep: list[WireRecord] = []
    seen: set[tuple[str, str]] = set()
    for r in records:
        key = (r.app_id, r.id)
        if r.format not in ID_DEDUP_FORMATS or (key in stored and key not in seen):
            seen.add(key)
            keep.append(r)
        elif key not in stored and not enricher.classifies(r):
            keep.append(r)
    return keep, len(records) - len(keep)


class RecentIds:
    """Report ids (scoped by app) already counted, so a client's retried batch, which reaches
    Kafka as a second message with the same ids (on any partition), is counted once. Only for
    `ID_DEDUP_FORMATS` (consumers/schema.py says why).

    Two levels: `fresh` drops copies of ids this process remembers (bounded: ids older than
    `window` seconds or beyond `max_ids` are forgotten), on the event loop; `stored` asks
    ClickHouse (`report_ids`, sorted by id) about a whole batch's ids right before its insert,
    on the writer's side, so the lookup never holds up decoding and classifying (it did, as one
    query per Kafka message on the event loop's path)."""

    def __init__(self, store: Store, window: float, max_ids: int) -> None:
        self.store = store
        self.window_ms = int(window * 1000)
        self.max_ids = max_ids
        self._ids: OrderedDict[tuple[str, str], int] = OrderedDict()

    def remember(self, records: list[WireRecord]) -> None:
        """Records counted elsewhere (already stored before a crash): later copies are not."""
        ids = self._ids
        for r in records:
            if r.format in ID_DEDUP_FORMATS:
                ids[(r.app_id, r.id)] = r.received_at_ms
        self._forget_old(records)

    def fresh(self, records: list[WireRecord]) -> tuple[list[WireRecord], int]:
        """The records this process has not counted before (first copy wins within the
        message), and how many were dropped as duplicates. Remembers the fresh ones."""
        keep = []
        ids = self._ids
        for r in records:
            if r.format in ID_DEDUP_FORMATS:
                key = (r.app_id, r.id)
                if key in ids:
                    continue
                ids[key] = r.received_at_ms
            keep.append(r)
        self._forget_old(records)
        return keep, len(records) - len(keep)

    def _forget_old(self, records: list[WireRecord]) -> None:
        """Once per message, not per record: checking the oldest id per record cost as much as
        the rest of the bookkeeping."""
        if not records:
            return
        ids = self._ids
        horizon = max(r.received_at_ms for r in records) - self.window_ms
        while ids and (len(ids) > self.max_ids or next(iter(ids.values())) < horizon):
            ids.popitem(last=False)

    async def stored(self, records: list[WireRecord]) -> set[tuple[str, str]]:
        """(app_id, id) of these records already in ClickHouse within the window (stored
        before a restart or rebalance, or by another process). Raises StoreError."""
        keys = {(r.app_id, r.id) for r in records if r.format in ID_DEDUP_FORMATS}
        if not keys:
            return set()
        since = max(r.received_at_ms for r in records) - self.window_ms
        found = await self.store.query_with_values(
            "SELECT DISTINCT app_id, id FROM {db}.report_ids "
            "WHERE received_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
            "AND app_id IN {apps:Array(String)} AND id IN {values}",
            [i for _, i in keys],
            {"since": since, "apps": sorted({a for a, _ in keys})},
        )
        return {(str(a), str(i)) for a, i in found} & keys


# --- write -------------------------------------------------------------------------------------


class Writer:
    """Inserts a batch: `reports` (its views follow) then sampled `evidence`. Retries with
    bounded exponential backoff until it succeeds or the consumer stops; `on_trouble(True)` while
    failing, so the engine keeps partitions paused and reports it."""

    def __init__(
        self,
        store: Store,
        metrics: ConsumerMetrics,
        retry_max_seconds: float,
        on_trouble: Callable[[bool], None],
        recent: RecentIds | None = None,
        max_days: int = 100,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.recent = recent
        # Every table is partitioned by day; a batch of valid records spans at most `max_days`
        # (consumers.decode.ReceivedWindow), which may be more than ClickHouse's default 100.
        self._partitions = {"max_partitions_per_insert_block": max(100, max_days)}
        self.retry_max = retry_max_seconds
        self.on_trouble = on_trouble
        self.stopping = False

    async def write(self, batch: Batch) -> bool:
        """True once stored; False only when asked to stop while ClickHouse was failing."""
        if not batch.records:
            return True
        token = batch.token()
        columns: list[list[Any]] | None = None
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                if columns is None:
                    # Once per batch, before the first attempt: a retried attempt whose
                    # predecessor did store the rows must not find them and drop them.
                    if self.recent is not None:
                        batch.drop_stored(await self.recent.stored(batch.records))
                        if not batch.records:
                            self.on_trouble(False)
                            return True
                    columns = report_columns(batch.records, batch.classes, batch.origins)
                await self.store.insert(
                    "reports",
                    columns,
                    REPORT_COLUMN_NAMES,
                    column_oriented=True,
                    column_types=REPORT_COLUMN_TYPES,
                    settings={
                        "insert_deduplication_token": token,
                        "deduplicate_blocks_in_dependent_materialized_views": 1,
                        **self._partitions,
                    },
                )
                if batch.evidence:
                    await self.store.insert(
                        "evidence",
                        batch.evidence,
                        EVIDENCE_COLUMN_NAMES,
                        column_types=EVIDENCE_COLUMN_TYPES,
                        settings={
                            "insert_deduplication_token": token + ":evidence",
                            **self._partitions,
                        },
                    )
            except StoreError as exc:
                self.metrics.insert_errors.inc()
                self.on_trouble(True)
                event(
                    log,
                    "insert_failed",
                    logging.WARNING,
                    attempt=attempt,
                    rows=len(batch.records),
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
                event(log, "insert_recovered", attempts=attempt, rows=len(batch.records))
            self.on_trouble(False)
            return True


# --- commit ------------------------------------------------------------------------------------


class Committer:
    """Commits the offsets of written batches at most every `interval` seconds, and only then
    applies their metric tallies."""

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
        self._tally = BatchTally()
        self._last = time.monotonic()  # the interval counts from the start too
        self.committed: dict[TopicPartition, int] = {}

    @property
    def pending(self) -> bool:
        return bool(self._offsets)

    def stage(self, batch: Batch) -> None:
        self._offsets.update(batch.commit_offsets())
        self._tally.merge(batch.tally)

    async def maybe_commit(self, force: bool = False) -> None:
        if not self._offsets:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        offsets, tally = self._offsets, self._tally
        self._offsets, self._tally = {}, BatchTally()
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
            tally.merge(self._tally)
            self._tally = tally
            event(log, "commit_failed", logging.WARNING, error=str(exc)[:300])
            return
        # No await between the commit returning and the count: a scrape sees both or neither.
        self.metrics.apply(tally)
        self.committed.update(offsets)

    def clear(self) -> None:
        self._offsets, self._tally = {}, BatchTally()
