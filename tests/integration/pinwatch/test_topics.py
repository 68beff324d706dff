"""`pinwatch topics` against the real broker: the layout shown, partitions raised on both topics,
a lower count refused with nothing changed; reports flow through partitions added while ingest
and the consumer run; a replication the cluster cannot give is refused at creation, by name."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import pytest

from devstack.clients import native_batch, network_error
from pinwatch.cmd_topics import run
from pinwatch.settings import Settings
from pinwatch.topics import TopicsError, ensure_topics, layouts, raise_partitions
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.pipeline import run_pipeline


def _topics(settings: Settings, partitions: int | None = None) -> int:
    return run(argparse.Namespace(partitions=partitions), settings)


def test_show_raise_and_refuse_to_lower(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(kafka_partitions=2, kafka_metadata_max_age_seconds=2)
    reports, dead = settings.kafka_topic, settings.kafka_dead_letter_topic

    assert _topics(settings) == 0
    assert f"{reports}: not created yet" in capsys.readouterr().out

    asyncio.run(ensure_topics(settings))
    assert _topics(settings) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown == [
        f"{name}: 2 partitions, replication 1, min.insync.replicas 1, retention 168 h"
        for name in (reports, dead)
    ]

    assert _topics(settings, 4) == 0
    out = capsys.readouterr().out
    assert f"{reports}: 2 -> 4\n{dead}: 2 -> 4\n" in out

    assert _topics(settings, 3) == 1
    err = capsys.readouterr().err
    assert f"{reports} has 4 partitions; {dead} has 4 partitions: Kafka cannot lower" in err
    assert "nothing was changed" in err
    assert [t.partitions for t in asyncio.run(layouts(settings))] == [4, 4]

    assert _topics(settings, 4) == 0
    assert capsys.readouterr().out == f"{reports}: already 4\n{dead}: already 4\n"


async def test_partitions_raised_while_running_carry_reports_end_to_end(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(kafka_partitions=2, kafka_metadata_max_age_seconds=2)
    async with run_pipeline(settings) as p:
        assert p.consumer is not None
        await raise_partitions(settings, 4)
        # The consumer group sees the new partitions at its next metadata refresh.
        deadline = time.monotonic() + 90
        while len(p.consumer.assignment) < 4:
            assert time.monotonic() < deadline, p.consumer.assignment
            await asyncio.sleep(0.5)
        # Ingest spreads devices over all four once its own metadata refresh saw them.
        sent: list[str] = []
        partitions: set[int] = set()
        deadline = time.monotonic() + 60
        while partitions != {0, 1, 2, 3}:
            assert time.monotonic() < deadline, f"reports only reached partitions {partitions}"
            for device in range(len(sent), len(sent) + 10):
                report = network_error(TEST_HOST, "dns")
                await p.post(native_batch([report], app=TEST_APP, device=f"device-{device}"))
                sent.append(report["id"])
            await p.wait_inserted(len(sent), timeout=60)
            rows = await p.store.query("SELECT id, kafka_partition FROM {db}.reports")
            partitions = {row[1] for row in rows}
    assert sorted(row[0] for row in rows) == sorted(sent)  # each once


async def test_a_replication_the_cluster_cannot_give_is_refused_by_name(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(kafka_replication_factor=3, kafka_min_insync_replicas=2)
    with pytest.raises(TopicsError) as failure:
        await ensure_topics(settings)
    message = str(failure.value)
    assert "PINWATCH_KAFKA_REPLICATION_FACTOR" in message
    assert "replication 3 and min.insync.replicas 2" in message
    assert "only 1 broker(s) are registered" in message
