"""Exact counters whatever the crash point: a consumer that dies after any of its inserts, with
any part of them committed, and a fresh consumer replaying the rest, count together what one
consumer without a crash would: each report id once as inserted, every other copy (a client's
retry) as a duplicate, and store each id once.

Hypothesis draws the messages of one partition (report ids from a small pool, so retries land
in the same message, the same batch, before and after the crash point), where the batches
end, how many batches are inserted before the crash and how many of those were committed.
Both consumers are the real steps (`tests/pipeline.HandDriven`: decode, the replay decision,
enrich, the Writer's retry lookup and insert) on real chDB; Kafka is left out (each consumer
is handed the messages a broker would deliver from the committed offset on), the crash itself
is tested with a real broker and a real SIGKILL in tests/e2e/test_consumer_crash.py.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumers.store import Store
from pinwatch.record import encode_batch
from pinwatch.settings import Settings
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.payloads import kafka_record
from tests.support.pipeline import HandDriven, KafkaMessage, migrated_store

RUNS = itertools.count()

# Each message: report ids by their index in a pool of 5 (a repeated index is a retry).
messages = st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=3), min_size=1, max_size=7)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[list[int]], list[int], int, int, list[int]]:
    """(messages, where the doomed consumer's batches end, batches inserted before the crash,
    of those committed, where the replaying consumer's batches end)."""
    sent = draw(messages)
    offsets = list(range(len(sent)))
    ends = sorted(draw(st.sets(st.sampled_from(offsets)))) or [offsets[-1]]
    inserted = draw(st.integers(0, len(ends)))
    committed = draw(st.integers(0, inserted))
    replay_ends = sorted(draw(st.sets(st.sampled_from(offsets))))
    return sent, ends, inserted, committed, replay_ends


class Target:
    """The module's database (a plain class: Hypothesis prints the fixtures of a failing
    example, and Settings hold tokens)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store


@pytest.fixture(scope="module")
async def target(make_module_settings: Callable[..., Settings]) -> AsyncIterator[Target]:
    settings = make_module_settings()
    async with migrated_store(settings) as store:
        yield Target(settings, store)


def _counted(consumers: list[HandDriven], name: str, **labels: str) -> float:
    """The counter summed over both consumers' /metrics."""
    return sum(c.consumer.metrics.registry.get_sample_value(name, labels) or 0 for c in consumers)


@hsettings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenario=scenarios(), memory=st.booleans())
# The issue: A, A again, B; everything inserted, nothing committed.
@example(scenario=([[0], [0], [1, 2]], [2], 1, 0, []), memory=False)
@example(scenario=([[0], [0], [1, 2]], [0, 1, 2], 3, 0, [0, 1, 2]), memory=False)
@example(scenario=([[0], [0], [1, 2]], [0, 1, 2], 3, 0, [0, 1, 2]), memory=True)
@example(scenario=([[0, 1], [1, 2], [2], [3]], [1, 3], 1, 1, [2]), memory=False)  # partly retried
@example(scenario=([[0, 1], [1, 2], [2], [3]], [1, 3], 1, 1, [2]), memory=True)
# The replay's first message is newer than a later batch: the memory covers the older one too.
@example(scenario=([[1], [4], [0]], [0], 1, 1, [1]), memory=True)
async def test_counters_are_exact_whatever_the_crash_point(
    target: Target,
    scenario: tuple[list[list[int]], list[int], int, int, list[int]],
    memory: bool,
) -> None:
    """`memory`: the fresh consumer owns the whole topic, so it loads the stored ids before its
    first message and answers its batches' retry lookups from memory (consumers.dedup)."""
    base, store = target.settings, target.store
    sent, ends, inserted, committed, replay_ends = scenario
    # Every example: a topic (its offsets and kafka_progress) and report ids of its own.
    run = next(RUNS)
    settings = base.model_copy(update={"kafka_topic": f"{base.kafka_topic}-{run}"})
    pool = [f"{uuid.uuid4()}" for _ in range(5)]
    # Received a second apart: messages are not in received order (a retry carries the time
    # of its original here), which the replaying consumer's memory must cover too.
    received = int(time.time() * 1000)
    records = {
        i: kafka_record(
            app_id=TEST_APP,
            host=TEST_HOST,
            id=pool[i],
            device=f"device-{i}",
            received_at_ms=received + 1000 * i,
        )
        for i in range(5)
    }
    values = [encode_batch([records[i] for i in ids]) for ids in sent]
    topic = settings.kafka_topic

    # 1. The doomed consumer: its batches end at `ends`; it dies after inserting `inserted` of
    #    them, `committed` of which were committed (and so counted).
    doomed = HandDriven(settings, store)
    resume = 0
    for n, end in enumerate(ends[:inserted]):
        start = ends[n - 1] + 1 if n else 0
        for offset in range(start, end + 1):
            await doomed.handle(topic, 0, KafkaMessage(offset, values[offset], 1000 + offset))
        batch = await doomed.write()
        if n < committed:
            doomed.commit(batch)
            resume = end + 1

    # 2. A fresh consumer (empty memory) gets every message from the committed offset on.
    survivor = HandDriven(settings, store)
    survivor.steps.recent.reset(exclusive=memory)  # as an assignment of every partition does
    for offset in range(resume, len(values)):
        await survivor.handle(topic, 0, KafkaMessage(offset, values[offset], 1000 + offset))
        if offset in replay_ends or offset == len(values) - 1:
            survivor.commit(await survivor.write())

    distinct = {i for ids in sent for i in ids}
    total = sum(len(ids) for ids in sent)
    both = [doomed, survivor]
    inserted_total = _counted(
        both, "pinwatch_consumer_inserted_reports_total", kind="pin_validation"
    )
    assert inserted_total == len(distinct)
    assert _counted(both, "pinwatch_consumer_duplicate_reports_total") == total - len(distinct)
    assert _counted(both, "pinwatch_consumer_consumed_records_total") == len(values)
    rows = await store.query(
        "SELECT id, count() FROM {db}.reports WHERE kafka_topic = {t:String} GROUP BY id",
        {"t": topic},
    )
    assert sorted(rows) == sorted((pool[i], 1) for i in distinct)
    if memory:
        lookups = survivor.consumer.metrics.registry.get_sample_value(
            "pinwatch_consumer_retry_lookups_total", {"answered_by": "clickhouse"}
        )
        assert lookups == 0, "every lookup of the replaying consumer is answered from memory"
