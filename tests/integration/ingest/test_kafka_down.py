"""Kafka stops mid-traffic: ingest answers 503 with Retry-After within a bounded time, never a 202
for a report that is not on the topic, and recovers when the broker is back.

This test runs its own broker (the shared one must never be stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from devstack.clients import native_batch, network_error
from devstack.localkafka import LocalKafka, free_ports
from pinwatch.settings import Settings
from tests.support.ingest import read_records
from tests.support.names import TEST_APP, TEST_HOST, TEST_KEY
from tests.support.polling import eventually
from tests.support.serve import serve_ingest

PRODUCE_TIMEOUT = 2.0
HEADERS = {"X-Pinwatch-Key": TEST_KEY, "Content-Type": "application/json"}


async def test_kafka_down_answers_503_and_loses_no_202(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    broker_port, controller_port = free_ports(2)
    broker = LocalKafka(
        settings=Settings(kafka_heap="256m"),
        data_dir=tmp_path / "own-broker",
        port=broker_port,
        controller_port=controller_port,
    )
    await asyncio.to_thread(broker.start)
    try:
        settings = make_settings(
            kafka_bootstrap=broker.bootstrap,
            kafka_produce_timeout_seconds=PRODUCE_TIMEOUT,
            ingest_ready_max_age_seconds=2.0,
            ingest_retry_after_seconds=7,
        )
        async with (
            serve_ingest(settings) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as client,
        ):
            answers: list[tuple[str, int, float, dict[str, Any]]] = []
            enough_503 = asyncio.Event()

            async def post_one() -> None:
                body = native_batch([network_error(TEST_HOST)], app=TEST_APP)
                started = time.monotonic()
                response = await client.post(
                    "/v1/reports", content=orjson.dumps(body), headers=HEADERS
                )
                answers.append(
                    (
                        body["reports"][0]["id"],
                        response.status_code,
                        time.monotonic() - started,
                        {"retry_after": response.headers.get("Retry-After"), **response.json()},
                    )
                )
                if sum(1 for a in answers if a[1] == 503) >= 8:
                    enough_503.set()

            for _ in range(20):
                await post_one()
            assert {status for _, status, _, _ in answers} == {202}

            # Keep posting (several requests in flight) while the broker goes away.
            stop = asyncio.Event()

            async def traffic() -> None:
                while not stop.is_set():
                    await asyncio.gather(*(post_one() for _ in range(4)))

            poster = asyncio.create_task(traffic())
            # the broker goes while requests are in flight: once traffic has got going
            before = len(answers)
            assert await eventually(lambda: len(answers) >= before + 8, timeout=30)
            await asyncio.to_thread(broker.stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough_503.wait(), 60)
            ready = await client.get("/readyz")
            stop.set()
            await poster

            unavailable = [a for a in answers if a[1] == 503]
            assert len(unavailable) >= 8, [a[1] for a in answers]
            assert {a[1] for a in answers} <= {202, 503}
            for _, _, elapsed, body in unavailable:
                assert body["retry_after"] == "7"
                assert body["error"] == "unavailable"
                assert elapsed < PRODUCE_TIMEOUT + 1.5  # bounded, not hanging on the broker
            assert ready.status_code == 503
            assert ready.headers["Retry-After"] == "7"

            # The broker comes back: ingest recovers, and every 202 is on the topic.
            await asyncio.to_thread(broker.start)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await post_one()
                if answers[-1][1] == 202:
                    break
                await asyncio.sleep(0.5)
            assert answers[-1][1] == 202, answers[-3:]

        accepted = {report_id for report_id, status, _, _ in answers if status == 202}
        on_topic = await read_records(settings, min_records=len(accepted), within=60)
        assert accepted <= {r.id for r in on_topic}
    finally:
        await asyncio.to_thread(broker.stop)
