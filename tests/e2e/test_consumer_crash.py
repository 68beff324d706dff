"""No double counting: a consumer SIGKILLed after its insert returned but before it committed the
offsets, then restarted, leaves every count exact, in ClickHouse and on /metrics.

The consumers run as real `pinwatch consume` processes on a chDB directory of their own (a
SIGKILL has to hit a process, not a task); ClickHouse is read in between by a short child
process, since chDB allows one data directory per process and this one holds the session's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from devstack.certs import CertificateAuthority
from devstack.clients import native_batch, network_error, pin_validation
from devstack.localkafka import free_port
from pinwatch.kafka import client_args
from pinwatch.settings import Settings
from tests.support.clickhouse import clickhouse_counts
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.paths import REPO
from tests.support.pipeline import metric_value, run_pipeline
from tests.support.serve import wait_ready

ROOT = REPO
PINWATCH = str(Path(sys.executable).parent / "pinwatch")


class ConsumerProcess:
    def __init__(self, settings: Settings, log: Path, **overrides: Any) -> None:
        self.port = free_port()
        # Real values (secrets too), and none for a setting left unset.
        env = {**os.environ, **settings.env_vars(list(Settings.model_fields))}
        for name, value in overrides.items():
            env[f"PINWATCH_{name.upper()}"] = str(value)
        self.log = log
        self.proc = subprocess.Popen(
            [PINWATCH, "consume", "--port", str(self.port)],
            env=env,
            cwd=ROOT,
            stdout=open(log, "ab"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_up(self, seconds: float = 60) -> None:
        await wait_ready(
            self.url,
            running=lambda: self.proc.poll() is None,
            what="consumer",
            log=self.log,
            seconds=seconds,
        )

    async def metric(self, name: str, **labels: str) -> float:
        async with httpx.AsyncClient(base_url=self.url) as client:
            text = (await client.get("/metrics")).text
        return metric_value(text, name, **labels)

    async def wait_metric(self, name: str, value: float, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await self.metric(name) >= value:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{name} = {await self.metric(name)}, waited for {value}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


async def _committed(settings: Settings) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(
        **client_args(settings),
        group_id=settings.kafka_consumer_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(settings.kafka_topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            parts = consumer.partitions_for_topic(settings.kafka_topic) or set()
        return {p: await consumer.committed(TopicPartition(settings.kafka_topic, p)) for p in parts}
    finally:
        await consumer.stop()


def _batches(ca: CertificateAuthority, n: int, tag: str) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        reports = [
            pin_validation(TEST_HOST, ca.chain("primary"), count=10),
            pin_validation(TEST_HOST, ca.chain("rotated"), result="pin_mismatch", count=2),
            network_error(TEST_HOST, "timeout", count=1),
        ]
        out.append(native_batch(reports, app=TEST_APP, device=f"device-{tag}-{i}"))
    return out


async def test_kill_between_insert_and_commit_then_restart_counts_everything_once(
    make_settings: Callable[..., Settings], ca: CertificateAuthority, tmp_path: Path
) -> None:
    settings = make_settings(batch_max_seconds=0.2)
    dsn = f"chdb:///{tmp_path / 'crash-chdb'}"
    log = tmp_path / "consumers.log"
    first, second = _batches(ca, 6, "a"), _batches(ca, 4, "b")
    # per batch: 10 ok + 2 failures + 1 network error, 3 rows
    async with run_pipeline(settings, consumer=False) as ingest:
        for batch in first:
            await ingest.post(batch)

        # 1. A consumer that inserts but would commit only after an hour: killed in between.
        doomed = ConsumerProcess(settings, log, clickhouse_dsn=dsn, commit_interval_seconds=3600)
        try:
            await doomed.wait_up()
            await doomed.wait_metric("pinwatch_consumer_insert_seconds_count", 1)
            for _ in range(150):  # every record processed (lag is updated each second)
                if await doomed.metric("pinwatch_consumer_lag") == 0:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.5)  # > batch_max_seconds: the last batch is inserted too
            # inserted, not committed, so not counted either
            assert await doomed.metric("pinwatch_consumer_inserted_reports_total") == 0
            assert await doomed.metric("pinwatch_pin_validations_total") == 0
        finally:
            doomed.kill()
        assert all(v is None for v in (await _committed(settings)).values())
        stored = clickhouse_counts(dsn, settings.clickhouse_database)
        assert stored["rows"] == 3 * len(first)  # the dead consumer's inserts are there

        # 2. Restarted: it replays from the last commit (none) and must not add a thing twice.
        survivor = ConsumerProcess(settings, log, clickhouse_dsn=dsn)
        try:
            await survivor.wait_up()
            for batch in second:
                await ingest.post(batch)
            total_batches = len(first) + len(second)
            await survivor.wait_metric(
                "pinwatch_consumer_inserted_reports_total", 3 * total_batches
            )
            await asyncio.sleep(1.5)  # anything extra would have shown up by now
            metric = survivor.metric
            assert await metric("pinwatch_consumer_inserted_reports_total") == 3 * total_batches
            assert await metric("pinwatch_pin_validations_total") == 12 * total_batches
            assert (
                await metric("pinwatch_pin_validations_total", cause="rotation_suspected")
                == 2 * total_batches
            )
            assert await metric("pinwatch_network_errors_total") == total_batches
            assert await metric("pinwatch_consumer_consumed_records_total") == total_batches
        finally:
            assert survivor.stop() == 0
    counts = clickhouse_counts(dsn, settings.clickhouse_database)
    assert counts == {
        "rows": 3 * total_batches,
        "ids": 3 * total_batches,
        "reports_sum": 13 * total_batches,
        "rollup_sum": 13 * total_batches,
        "hourly_sum": 13 * total_batches,
        "failures": 2 * total_batches,
    }
    committed = await _committed(settings)
    assert sum(v or 0 for v in committed.values()) == total_batches


async def _stored_reports(consumer: ConsumerProcess, settings: Settings) -> int:
    """Reports stored for TEST_HOST (sum of their counts) as the rollout API answers: ClickHouse
    read through the process that holds it."""
    async with httpx.AsyncClient(base_url=consumer.url, timeout=30) as client:
        answer = await client.get(
            f"/v1/rollout/{TEST_HOST}",
            params={"since": "1h"},
            headers={"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"},
        )
    answer.raise_for_status()
    return int(answer.json()["reports"])


async def test_a_replay_through_a_message_of_retries_only_keeps_the_counters_exact(
    make_settings: Callable[..., Settings], ca: CertificateAuthority, tmp_path: Path
) -> None:
    """The issue's reproduction: on one partition, batch A, then A again (a client retry: same
    report ids), then batch B; all inserted, none committed, SIGKILL, restart. The replay meets
    A's retry, a message no row carries the offset of, between messages that are stored."""
    settings = make_settings(kafka_partitions=1, batch_max_seconds=0.2)
    dsn = f"chdb:///{tmp_path / 'replay-chdb'}"
    log = tmp_path / "consumers.log"
    rotated = ca.chain("rotated")
    a = native_batch(
        [pin_validation(TEST_HOST, rotated, result="pin_mismatch", count=1)],
        app=TEST_APP,
        device="device-a",
    )
    b = native_batch(
        [
            pin_validation(TEST_HOST, rotated, result="pin_mismatch", count=2),
            pin_validation(TEST_HOST, ca.chain("primary"), count=4),
        ],
        app=TEST_APP,
        device="device-b",
    )
    async with run_pipeline(settings, consumer=False) as ingest:
        doomed = ConsumerProcess(settings, log, clickhouse_dsn=dsn, commit_interval_seconds=3600)
        try:
            await doomed.wait_up()
            for body in (a, a, b):
                await ingest.post(body)
            deadline = time.monotonic() + 60
            while await _stored_reports(doomed, settings) < 1 + 2 + 4:
                assert time.monotonic() < deadline, "the first consumer never stored A and B"
                await asyncio.sleep(0.2)
            assert await doomed.metric("pinwatch_consumer_inserted_reports_total") == 0
        finally:
            doomed.kill()
        assert all(v is None for v in (await _committed(settings)).values())

        survivor = ConsumerProcess(settings, log, clickhouse_dsn=dsn)
        try:
            await survivor.wait_up()
            await survivor.wait_metric("pinwatch_consumer_consumed_records_total", 3)
            assert await _stored_reports(survivor, settings) == 1 + 2 + 4
            metric = survivor.metric
            assert await metric("pinwatch_consumer_inserted_reports_total") == 3
            assert await metric("pinwatch_consumer_duplicate_reports_total") == 1
            assert await metric("pinwatch_pin_validations_total") == 1 + 2 + 4
            assert await metric("pinwatch_pin_validations_total", result="pin_mismatch") == 3
        finally:
            assert survivor.stop() == 0
    counts = clickhouse_counts(dsn, settings.clickhouse_database)
    assert counts["rows"] == counts["ids"] == 3
    assert counts["reports_sum"] == counts["rollup_sum"] == 1 + 2 + 4
