"""When the in-memory id set answers a batch's retry lookup alone (consumers/dedup.py RecentIds):
only once loaded after an assignment of every partition, and only for batches whose window
starts at or after what it has forgotten. ClickHouse is a stand-in here that answers the load
and records every lookup; tests/integration/consumers/test_dedup_memory.py proves the same on
a real broker and chDB."""

from __future__ import annotations

from typing import Any

import pytest

from consumers import dedup
from consumers.batch import Batch, Part
from consumers.decode import Block, decode
from consumers.dedup import RecentIds
from consumers.store import StoreError
from pinwatch.record import encode_batch
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.payloads import kafka_record

HOUR_MS = 3_600_000


class Stored:
    """What `report_ids` holds, (app, id, received ms); counts the reads of each kind."""

    def __init__(self, rows: list[tuple[str, str, int]], failing_loads: int = 0) -> None:
        self.rows = rows
        self.loads = 0
        self.lookups = 0
        self.failing_loads = failing_loads

    async def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        if self.failing_loads:
            self.failing_loads -= 1
            raise StoreError("query: ClickHouse is down")
        since, limit = parameters["since"], parameters["limit"]
        found = sorted((r for r in self.rows if r[2] >= since), key=lambda r: -r[2])
        if "count()" in sql:
            return [(min(len(found), limit),)]
        assert "ORDER BY at DESC" in sql
        self.loads += 1
        return found[:limit]

    async def query_with_values(self, sql: str, values: Any, parameters: Any) -> list[Any]:
        self.lookups += 1
        return [(a, i) for a, i, at in self.rows if i in set(values) and at >= parameters["since"]]


def block(*reports: tuple[str, int]) -> Block:
    records = [
        kafka_record(app_id=TEST_APP, host=TEST_HOST, id=i, received_at_ms=at) for i, at in reports
    ]
    decoded, rejected = decode(encode_batch(records))
    assert not rejected
    return decoded


async def handled(recent: RecentIds, b: Block) -> set[tuple[str, str]]:
    """One message through Deduplicate's part of the memory, then its batch's lookup."""
    await recent.ensure_loaded(b)
    fresh, _ = recent.fresh(b)
    batch = Batch()
    batch.add(Part(("t", 0, 0), fresh, [None] * len(fresh.profiles)))
    return await recent.stored(batch)


async def test_a_complete_memory_answers_and_a_shared_topic_reads_clickhouse() -> None:
    now = 10_000 * HOUR_MS
    store = Stored([(TEST_APP, "old", now - HOUR_MS)])
    recent = RecentIds(store, window=86_400, max_ids=100)  # type: ignore[arg-type]

    recent.reset(exclusive=False)  # sharing the topic: no load, every batch looked up
    assert await handled(recent, block(("old", now))) == {(TEST_APP, "old")}
    assert (store.loads, store.lookups) == (0, 1)

    recent.reset(exclusive=True)  # owning every partition: loaded before the first message
    assert await handled(recent, block(("new", now))) == set()
    assert (store.loads, store.lookups) == (1, 1)
    again, dropped = recent.fresh(block(("old", now)))  # the retry is found in memory
    assert (len(again), dropped) == (0, 1)


async def test_forgetting_raises_the_horizon_and_brings_the_lookup_back() -> None:
    now = 10_000 * HOUR_MS
    store = Stored([(TEST_APP, "stored", now - HOUR_MS)])
    recent = RecentIds(store, window=86_400, max_ids=2)  # type: ignore[arg-type]
    recent.reset(exclusive=True)
    assert await handled(recent, block(("a", now))) == set()  # "stored" loaded, "a" added
    assert store.lookups == 0
    # A third id pushes "stored" out: the memory is complete only after it from now on, and a
    # batch whose window reaches back to it asks ClickHouse, which finds the retry.
    assert await handled(recent, block(("b", now))) == set()
    assert recent.complete_from == now - HOUR_MS + 1
    assert store.lookups == 1
    assert await handled(recent, block(("stored", now))) == {(TEST_APP, "stored")}
    assert store.lookups == 2


async def test_a_window_with_more_ids_than_the_cap_is_not_loaded() -> None:
    """It could never be complete in memory; reading it would scan the window for nothing."""
    now = 10_000 * HOUR_MS
    store = Stored([(TEST_APP, f"stored-{n}", now - n * HOUR_MS) for n in range(5)])
    recent = RecentIds(store, window=86_400, max_ids=4)  # type: ignore[arg-type]
    recent.reset(exclusive=True)
    assert await handled(recent, block(("stored-4", now))) == {(TEST_APP, "stored-4")}
    assert (store.loads, store.lookups, recent.complete_from) == (0, 1, None)


async def test_a_load_that_failed_first_keeps_the_ids_handled_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the load fails, messages go on (looked up); their ids, in the open batch or an
    insert in flight, are not stored yet, so the load that succeeds later must add to the
    memory, not replace it: otherwise a retry of one of them is found nowhere."""
    monkeypatch.setattr(dedup, "_LOAD_RETRY_SECONDS", 0.0)
    now = 10_000 * HOUR_MS
    store = Stored([(TEST_APP, "stored", now - HOUR_MS)], failing_loads=1)
    recent = RecentIds(store, window=86_400, max_ids=100)  # type: ignore[arg-type]
    recent.reset(exclusive=True)
    assert await handled(recent, block(("pending", now))) == set()  # load failed: looked up
    assert (store.loads, store.lookups, recent.complete_from) == (0, 1, None)
    await recent.ensure_loaded(block(("next", now)))  # loads now; "pending" is not stored yet
    assert recent.complete_from == now - 86_400_000 - dedup._LOAD_MARGIN_MS
    again, dropped = recent.fresh(block(("pending", now), ("stored", now)))
    assert (len(again), dropped) == (0, 2)
