"""Counting each report once: client retries (`RecentIds`) and replays after a crash (`Progress`,
`counted_on_replay`). The queries are consumers/storage.py's."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from consumers import storage
from consumers.batch import Batch
from consumers.decode import Block
from consumers.schema import ID_DEDUP_FORMATS
from consumers.store import Store, StoreError
from pinwatch.logs import event

log = logging.getLogger("pinwatch.consumer")

TopicPartition = tuple[str, int]
_LOAD_CHUNK = 10_000  # ids loaded per age entry (forgotten together)
_LOAD_RETRY_SECONDS = 10.0
# Loaded from this much before the first message's window too: other partitions' messages (a
# partition further behind, another ingest's clock) may be older than that first message, and
# their batches are answered from memory only if their window starts after the load's start.
_LOAD_MARGIN_MS = 3_600_000


class RecentIds:
    """Report ids (scoped by app) already counted, so a client's retried batch, which reaches
    Kafka as a second message with the same ids (on any partition), is counted once. Only for
    `ID_DEDUP_FORMATS` (consumers/schema.py says why).

    Two levels: `fresh` drops copies of ids this process remembers (bounded: ids older than
    `window` seconds or beyond `max_ids` are forgotten, a message's ids at a time), on the event
    loop; `stored` asks ClickHouse (`report_ids`, sorted by id) about a whole batch's ids right
    before its insert, on the writer's side, so the lookup never holds up decoding.

    Per message, not per report: ids are kept per app in a set, checked and added with set
    operations in C; a message whose ids are all new and distinct (real traffic) costs no
    Python per report. (A set, not a dict: half the memory touched per id, measured 0.11
    against 0.2 us an id at 300,000 ids.)

    When the memory is known complete, `stored` answers without asking ClickHouse. Complete
    means: every id in `report_ids` with `received_at >= complete_from` is in memory. That
    holds when this consumer (a) owns every partition of the topic (`reset(exclusive=True)` on
    each assignment: no other member of the group inserts meanwhile), and (b) loaded the
    memory from `report_ids` after that assignment (`ensure_loaded`, before the first message:
    the previous owners drained their inserts before giving the partitions up), and keeps
    every id it handles. `complete_from` is the load's start, raised past every id forgotten
    since the assignment (older than the window, or beyond `max_ids`). A batch whose window
    starts there or later needs no lookup; any other batch (a backlog older than the load, a
    memory truncated by `max_ids`, a consumer sharing the topic with others) is looked up as
    before. docs/reliability.md says what this rests on."""

    def __init__(
        self, store: Store, window: float, max_ids: int, lookups: Counter | None = None
    ) -> None:
        self.store = store
        self.lookups = lookups  # pinwatch_consumer_retry_lookups_total, by what answered
        self.window_ms = int(window * 1000)
        self.max_ids = max_ids
        self._ids: dict[str, set[str]] = {}  # per app
        # (newest received_at, app, ids) per message, oldest first: what to forget.
        self._ages: deque[tuple[int, str, list[str]]] = deque()
        self._size = 0
        self.exclusive = False  # this consumer owns every partition of the topic
        self.loaded_from: int | None = None  # the load's start (ms), once loaded since a reset
        self.forgotten = 0  # past the newest id forgotten since the last reset (ms)
        self._too_many = False  # the window held more than max_ids ids: not loaded
        self._retry_load_at = 0.0

    def __len__(self) -> int:
        return self._size

    def fresh(self, block: Block) -> tuple[Block, int]:
        """The reports this process has not counted before (first copy wins within the
        message), and how many were dropped as duplicates. Remembers the fresh ones."""
        groups = _by_app(block)
        if not groups:
            return block, 0
        keep: list[bool] | None = None
        for app, rows, ids in groups:
            known = self._ids.setdefault(app, set())
            if known.isdisjoint(ids):  # (two passes over the ids, no set of them built)
                size = len(known)
                known.update(ids)
                if len(known) - size == len(ids):
                    self._add(app, ids, block)
                    continue
                known.difference_update(ids)  # a copy within the message: none was known
            if keep is None:
                keep = [True] * len(block)
            added = []
            for row, i in zip(rows, ids, strict=True):
                if i in known:
                    keep[row] = False
                else:
                    known.add(i)
                    added.append(i)
            self._add(app, added, block)
        if keep is None:
            return block, 0
        return block.take(keep), keep.count(False)

    def remember(self, block: Block) -> None:
        """Reports counted elsewhere (already stored before a crash): later copies are not."""
        for app, _, ids in _by_app(block):
            known = self._ids.setdefault(app, set())
            new = [i for i in dict.fromkeys(ids) if i not in known]
            known.update(new)
            self._add(app, new, block)

    def _add(self, app: str, ids: list[str], block: Block) -> None:
        """`ids` (already in memory) will be forgotten with `block`'s newest report."""
        if not ids:
            return
        newest = block.span()[1]
        self._ages.append((newest, app, ids))  # (a block's columns are never changed in place)
        self._size += len(ids)
        expired = newest - self.window_ms
        ages = self._ages
        while ages and (self._size > self.max_ids or ages[0][0] < expired):
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        newest, app, old = self._ages.popleft()
        self._ids[app].difference_update(old)
        self._size -= len(old)
        # What is left no longer holds these ids: complete only for later ones.
        self.forgotten = max(self.forgotten, newest + 1)

    def reset(self, exclusive: bool) -> None:
        """Partitions were (re)assigned: forget everything; when this consumer owns them all,
        the memory is loaded from ClickHouse before the next message (`ensure_loaded`)."""
        self._ids.clear()
        self._ages.clear()
        self._size = 0
        self.exclusive = exclusive
        self.loaded_from = None
        self.forgotten = 0
        self._too_many = False

    async def ensure_loaded(self, block: Block) -> None:
        """Once after an exclusive assignment, before its first message (`block`): load the ids
        stored since the window before that message's oldest report, so a backlog read from
        there on finds its retries in memory. Only when they fit in `max_ids`: a window holding
        more can never be complete in memory, and reading it would scan the whole window for
        nothing (batches are looked up then, as before). A failed load is not fatal: batches
        are looked up meanwhile, and it is tried again later. The load is added to what is in
        memory, never in its place: after a failed load, the open batch and the insert in
        flight hold ids that are not stored yet."""
        done = self.loaded_from is not None or self._too_many
        if done or not self.exclusive or time.monotonic() < self._retry_load_at:
            return
        now_ms = int(time.time() * 1000)
        oldest = block.span()[0] if len(block) else now_ms
        since = min(oldest, now_ms) - self.window_ms - _LOAD_MARGIN_MS
        try:
            held = await storage.count_stored_since(self.store, since, self.max_ids + 1)
            if held > self.max_ids:
                self._too_many = True
                event(log, "dedup_memory_not_loaded", since_ms=since, more_ids_than=self.max_ids)
                return
            rows = await storage.stored_since(self.store, since, self.max_ids + 1)
        except StoreError as exc:
            self._retry_load_at = time.monotonic() + _LOAD_RETRY_SECONDS
            event(log, "dedup_memory_load_failed", logging.WARNING, error=str(exc)[:300])
            return
        loaded_from = since
        # (ids this consumer inserted since the count may have pushed it over)
        if len(rows) > self.max_ids:  # truncated: complete only after the first one left out
            loaded_from = rows[self.max_ids][2] + 1
            del rows[self.max_ids :]
        # Older than what is in memory already: in front of it, oldest first (as _ages is).
        for end in range(0, len(rows), _LOAD_CHUNK):  # newest chunk first
            chunk = rows[end : end + _LOAD_CHUNK]
            by_app: dict[str, list[str]] = {}
            for app, i, _ in chunk:
                by_app.setdefault(app, []).append(i)
            newest = chunk[0][2]
            for app, ids in by_app.items():
                known = self._ids.setdefault(app, set())
                new = [i for i in dict.fromkeys(ids) if i not in known]
                known.update(new)
                self._ages.appendleft((newest, app, new))
                self._size += len(new)
        while self._size > self.max_ids:
            self._forget_oldest()
        self.loaded_from = loaded_from
        event(
            log,
            "dedup_memory_loaded",
            ids=self._size,
            since_ms=since,
            complete_from=self.complete_from,
        )

    @property
    def complete_from(self) -> int | None:
        """The memory holds every stored id received at or after this (ms); None: unknown."""
        if not self.exclusive or self.loaded_from is None:
            return None
        return max(self.loaded_from, self.forgotten)

    def _count_lookup(self, answered_by: str) -> None:
        if self.lookups is not None:
            self.lookups.labels(answered_by=answered_by).inc()

    async def stored(self, batch: Batch) -> set[tuple[str, str]]:
        """(app_id, id) of the batch's reports already in ClickHouse within the window (stored
        before a restart or rebalance, or by another process). Raises StoreError."""
        apps, ids = batch.dedup_ids()
        if not ids:
            return set()
        since = batch.newest_received() - self.window_ms
        complete_from = self.complete_from
        if complete_from is not None and since >= complete_from:
            # Every stored id of the window is in memory, and the batch's ids were not in it
            # when `fresh` took them: none is stored.
            self._count_lookup("memory")
            return set()
        self._count_lookup("clickhouse")
        found = await storage.stored_ids(self.store, apps, ids, since)
        return found & batch.dedup_keys() if found else found


def _by_app(block: Block) -> list[tuple[str, list[int] | range, list[str]]]:
    """(app, rows, ids) of the block's reports deduplicated by id, per app."""
    profiles = block.profiles
    if not profiles:
        return []
    apps = [p.app_id if p.format in ID_DEDUP_FORMATS else None for p in profiles]
    if len(set(apps)) == 1:
        return [] if apps[0] is None else [(apps[0], range(len(block)), block.ids)]
    rows: dict[str, list[int]] = {}
    for row, code in enumerate(block.profile):
        app = apps[code]
        if app is not None:
            rows.setdefault(app, []).append(row)
    ids = block.ids
    return [(app, r, [ids[i] for i in r]) for app, r in rows.items()]


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
        offset = await storage.stored_offset(self.store, topic, partition)
        if offset is not None:
            self.stored[(topic, partition)] = offset
        self.loaded.add((topic, partition))
        event(log, "partition_progress", topic=topic, partition=partition, stored_up_to=offset)

    def is_stored(self, topic: str, partition: int, offset: int) -> bool:
        stored = self.stored.get((topic, partition))
        return stored is not None and offset <= stored

    async def replayed(
        self,
        origin: tuple[str, int, int],
        block: Block,
        classifies: Callable[[Any], bool],
        recent: RecentIds,
    ) -> set[tuple[str, str]] | None:
        """For a message `is_stored` says was inserted before: (app_id, id) of its reports that
        have a row at this offset. None when that progress is stale: the partition's progress is
        dropped then, and the rest of the partition is inserted normally. `classifies(profile)`:
        would the report be stored rather than dead-lettered?

        `kafka_progress` alone cannot tell a replay after a crash from a topic that was deleted
        and created again (offsets restart at 0 while ClickHouse keeps the old incarnation's
        progress); the rows settle it. A message with no row at its offset is no proof of a new
        topic, though: the consumer before the crash dropped every report of it as a client
        retry (or dead-lettered it). Its progress stands when each report it would store is a
        retry of an id stored before; taking it for stale instead counted the stored messages
        after it as duplicates."""
        if not len(block):
            return set()
        hosts = sorted({block.profiles[c].host for c in set(block.profile)})
        found = await storage.ids_at_offset(
            self.store, origin, hosts, sorted(set(block.received)), list(block.ids)
        )
        if found:
            return found
        storable = [
            row for row, code in enumerate(block.profile) if classifies(block.profiles[code])
        ]
        retries = [
            (block.profiles[block.profile[row]].app_id, block.ids[row])
            for row in storable
            if block.profiles[block.profile[row]].format in ID_DEDUP_FORMATS
        ]
        if len(retries) == len(storable):
            keys = set(retries)
            if not keys:
                return found
            apps = {app for app, _ in keys}
            since = block.span()[1] - recent.window_ms
            if keys <= await storage.stored_ids(self.store, apps, [i for _, i in keys], since):
                return found
        topic, partition, offset = origin
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
    block: Block, stored: set[tuple[str, str]], classifies: Callable[[Any], bool]
) -> tuple[Block, int]:
    """The reports of a replayed message (`Progress.replayed`) to count as the consumer before
    the crash would have, and how many were client retries: a report with a row at this offset
    counts once (the first copy of its id), as does a format not deduplicated by id; a report
    that does not classify goes on (to the dead-letter topic again); the rest were retries."""
    keep: list[bool] = []
    seen: set[tuple[str, str]] = set()
    for code, i in zip(block.profile, block.ids, strict=True):
        profile = block.profiles[code]
        key = (profile.app_id, i)
        if profile.format not in ID_DEDUP_FORMATS or (key in stored and key not in seen):
            seen.add(key)
            keep.append(True)
        else:
            keep.append(key not in stored and not classifies(profile))
    return block.take(keep), keep.count(False)
