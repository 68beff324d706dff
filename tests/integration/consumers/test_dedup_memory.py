"""Client retries answered from memory (consumers/dedup.py RecentIds), on a real broker: a
consumer that owns every partition of the topic loads the ids stored within the window on each
assignment and then needs no `report_ids` read per batch; one that shares the topic reads it as
before. Each test checks the counts (each report once as inserted, every other copy as a
duplicate, each id stored once) and which of the two answered
(`pinwatch_consumer_retry_lookups_total`), so the memory path is proven where it is taken and
the lookup where it must be.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from consumers.consumer import Consumer
from consumers.store import Store
from pinwatch.record import encode_batch
from pinwatch.settings import Settings
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.payloads import kafka_record
from tests.support.pipeline import migrated_store, produce, running_consumer
from tests.support.polling import eventually

FAST = dict(batch_max_seconds=0.2, commit_interval_seconds=0.2, kafka_metadata_max_age_seconds=1)


def message(*report_ids: str) -> bytes:
    """A Kafka message of native reports with these ids (a retry is the same id again)."""
    return encode_batch([kafka_record(app_id=TEST_APP, host=TEST_HOST, id=i) for i in report_ids])


def sample(consumers: list[Consumer], name: str, **labels: str) -> float:
    return sum(c.metrics.registry.get_sample_value(name, labels) or 0 for c in consumers)


def inserted(*consumers: Consumer) -> float:
    return sample(
        list(consumers), "pinwatch_consumer_inserted_reports_total", kind="pin_validation"
    )


def duplicates(*consumers: Consumer) -> float:
    return sample(list(consumers), "pinwatch_consumer_duplicate_reports_total")


def answered(consumer: Consumer, by: str) -> float:
    return sample([consumer], "pinwatch_consumer_retry_lookups_total", answered_by=by)


async def counted(consumers: list[Consumer], reports: int, copies: int) -> None:
    """Until these consumers committed `reports` inserted and `copies` duplicates in all."""
    seen = await eventually(
        lambda: (inserted(*consumers), duplicates(*consumers)) == (reports, copies), timeout=60
    )
    assert seen, f"inserted {inserted(*consumers)}, duplicates {duplicates(*consumers)}"


async def stored_once(store: Store, ids: list[str]) -> None:
    rows = await store.query("SELECT id, count() FROM {db}.reports GROUP BY id")
    assert sorted(rows) == sorted((i, 1) for i in ids)


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


async def test_after_a_restart_the_loaded_memory_finds_the_retry(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(**FAST)
    x, y = ids(2)
    async with migrated_store(settings) as store:
        async with running_consumer(settings, store) as (first, _):
            await produce(settings, [message(x)])
            await counted([first], 1, 0)
        # A new process: its memory is loaded from report_ids before its first message.
        async with running_consumer(settings, store) as (second, _):
            await produce(settings, [message(x), message(y)])
            await counted([second], 1, 1)
            assert second.steps.recent.exclusive
            assert answered(second, "memory") >= 1
            assert answered(second, "clickhouse") == 0
        await stored_once(store, [x, y])


async def test_a_rebalance_reads_clickhouse_while_shared_and_reloads_when_alone(
    make_settings: Callable[..., Settings],
) -> None:
    """A owns both partitions and stores X; B joins (each owns one: lookups), gets a retry of X
    and stores Y; B leaves, A owns both again and must know Y, which B stored."""
    settings = make_settings(kafka_partitions=2, **FAST)
    x, y, z = ids(3)
    async with migrated_store(settings) as store:
        async with running_consumer(settings, store) as (a, _):
            assert await eventually(lambda: len(a.assignment) == 2, timeout=60)
            await produce(settings, [message(x)], partition=0)
            await counted([a], 1, 0)

            async with running_consumer(settings, store) as (b, _):
                # (the assignment shows before the listener that reads it has run)
                shared = await eventually(
                    lambda: (
                        [len(c.assignment) for c in (a, b)] == [1, 1]
                        and not (a.steps.recent.exclusive or b.steps.recent.exclusive)
                    ),
                    timeout=60,
                )
                assert shared, (a.assignment, b.assignment)
                [(_, partition_of_b)] = b.assignment
                await produce(settings, [message(x), message(y)], partition=partition_of_b)
                await counted([a, b], 2, 1)
                assert duplicates(b) == 1 and inserted(b) == 1  # X stored by A, Y by B
                assert answered(b, "clickhouse") >= 1
            # B has left: A owns the whole topic again and loads the ids, Y included.
            assert await eventually(lambda: len(a.assignment) == 2, timeout=60)
            memory, clickhouse = answered(a, "memory"), answered(a, "clickhouse")
            await produce(settings, [message(y, z)], partition=0)
            await counted([a, b], 3, 2)
            assert a.steps.recent.exclusive
            assert answered(a, "memory") > memory
            assert answered(a, "clickhouse") == clickhouse
        await stored_once(store, [x, y, z])


async def test_partitions_added_to_the_topic_are_read_with_the_memory_reloaded(
    make_settings: Callable[..., Settings],
) -> None:
    """The topic grows from 1 to 3 partitions (ingest then sends a device's retry elsewhere):
    the consumer is assigned the new partitions, reloads, and counts the retry once."""
    settings = make_settings(kafka_partitions=1, **FAST)
    x, y = ids(2)
    async with migrated_store(settings) as store:
        async with running_consumer(settings, store) as (consumer, _):
            await produce(settings, [message(x)], partition=0)
            await counted([consumer], 1, 0)
            await add_partitions(settings, 3)
            grown = await eventually(lambda: len(consumer.assignment) == 3, timeout=60)
            assert grown, consumer.assignment
            memory = answered(consumer, "memory")
            await produce(settings, [message(x, y)], partition=2)
            await counted([consumer], 2, 1)
            assert consumer.steps.recent.exclusive
            assert answered(consumer, "memory") > memory
            assert answered(consumer, "clickhouse") == 0
        await stored_once(store, [x, y])


async def test_a_window_beyond_the_cap_is_not_loaded_and_the_lookup_finds_the_retry(
    make_settings: Callable[..., Settings],
) -> None:
    """dedup_max_ids smaller than what the window holds: the memory is not loaded (it could
    never hold the whole window), and a retry of a stored id is found by the lookup."""
    settings = make_settings(dedup_max_ids=2, **FAST)
    old, newer, newest, fresh = ids(4)
    async with migrated_store(settings) as store:
        async with running_consumer(settings, store) as (first, _):
            for i in (old, newer, newest):  # one after the other: received in this order
                await produce(settings, [message(i)])
                await counted([first], [old, newer, newest].index(i) + 1, 0)
        async with running_consumer(settings, store) as (second, _):
            await produce(settings, [message(old, fresh)])
            await counted([second], 1, 1)
            assert answered(second, "clickhouse") >= 1
            assert answered(second, "memory") == 0
        await stored_once(store, [old, newer, newest, fresh])


async def add_partitions(settings: Settings, total: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({settings.kafka_topic: NewPartitions(total_count=total)})
    finally:
        await admin.close()
