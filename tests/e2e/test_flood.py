"""One device floods pin failures; nobody is paged. Then a real rotation is, through the same
stack, while the flood goes on.

The whole local stack as `pinwatch up` runs it (ingest, consumer, Prometheus with the shipped
rules, Alertmanager with the shipped routing, the page receiver), as processes on free ports.
The flooding device sends enforced failures against a publicly trusted, unpinned chain (what a
rotation looks like, the worst case) from one address, on two connections, as fast as ingest
answers: ingest holds it to its device rate (429 with Retry-After), what it let through reaches
Prometheus, and no page-severity pinning alert even becomes pending, since one device on one
network never has breadth. Then ten and more devices on 20 networks fail the same way, and the
rotation page arrives. Scrape and evaluation run every 2 s (the test is not about production
timing); the rules, their `for` and Alertmanager's group_wait are the shipped ones.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.certs import CertificateAuthority
from devstack.monitoring import prometheus_alerts, query
from devstack.stack import Stack
from pinwatch.settings import Settings
from tests.support.ingest import RunningIngest
from tests.support.names import TEST_APP, TEST_HOST, TEST_KEY
from tests.support.payloads import failing_batch, ok_batch
from tests.support.stack import local_stack

pytestmark = pytest.mark.timeout(600)

INTERVAL = 2.0
FLOOD_WATCH_SECONDS = 60  # the rotation page's `for` (15 s) and group_wait (10 s), twice over
PAGE_DEADLINE_SECONDS = 180
FLOOD_SOURCE = "127.41.1.1"
HEADERS = {"X-Pinwatch-Key": TEST_KEY, "Content-Type": "application/json"}


def value(stack: Stack, expr: str) -> float:
    result = query(stack.prometheus_url, expr)
    return float(result[0]["value"][1]) if result else 0.0


def pinning_pages_in_prometheus(stack: Stack) -> list[dict[str, Any]]:
    return [
        a
        for a in prometheus_alerts(stack.prometheus_url)
        if a["labels"].get("severity") == "page" and a["labels"].get("component") == "pinning"
    ]


NO_RETRY_AFTER = -1  # a 429 without Retry-After, counted apart


async def flood(ingest: RunningIngest, chain: Any, stop: asyncio.Event) -> Counter[int]:
    """One device, one address, two connections, no pause: the statuses of every answer."""
    statuses: Counter[int] = Counter()

    async def connection() -> None:
        while not stop.is_set():
            answer = await ingest.post(failing_batch(chain, "debug-phone"), source=FLOOD_SOURCE)
            statuses[answer.status_code] += 1
            if answer.status_code == 429 and int(answer.headers.get("Retry-After", 0)) < 1:
                statuses[NO_RETRY_AFTER] += 1

    await asyncio.gather(connection(), connection())
    return statuses


def test_one_device_flooding_pages_nobody_while_a_real_rotation_still_pages(
    make_settings: Callable[..., Settings],
    kafka_bootstrap: str,
    ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    rotated = ca.chain("rotated")  # publicly trusted, not pinned: a rotation's failures
    with local_stack(
        make_settings(), tmp_path / "stack", kafka_bootstrap=kafka_bootstrap, interval=INTERVAL
    ) as stack:
        assert stack.receiver is not None
        receiver = stack.receiver

        async def play() -> tuple[Counter[int], float]:
            ingest = RunningIngest(stack.ingest_url, stack.config, HEADERS)
            stop = asyncio.Event()
            flooding = asyncio.create_task(flood(ingest, rotated, stop))
            try:
                for second in range(FLOOD_WATCH_SECONDS):
                    # everyone else keeps succeeding, one device a second on ten networks
                    ok = await ingest.post(
                        ok_batch(ca, f"steady-{second}"), source=f"127.66.{second % 10}.1"
                    )
                    assert ok.status_code == 202, ok.text
                    pending = await asyncio.to_thread(pinning_pages_in_prometheus, stack)
                    assert not pending, f"{pending[0]['labels']} is {pending[0]['state']}"
                    assert not receiver.pages(), receiver.pages()[0].describe()
                    await asyncio.sleep(1)
                # Quiet for want of breadth, not of data: the flood's failures are in
                # Prometheus as rotation failures, from one device.
                failures = await asyncio.to_thread(
                    value,
                    stack,
                    f'sum(pinwatch_pin_validations_total{{host="{TEST_HOST}",result="pin_mismatch"}})',
                )
                assert failures >= 20 * 60  # its burst at least, 20 validations a batch
                devices = await asyncio.to_thread(
                    value,
                    stack,
                    'app_host_cause:pinwatch_failing_devices:max{cause="rotation_suspected"}',
                )
                assert devices == 1
                limited = await asyncio.to_thread(
                    value,
                    stack,
                    'sum(pinwatch_ingest_rejected_total{reason="rate_limited_device"})',
                )
                assert limited > 0

                # A real rotation: one new failing device a second on 20 networks.
                started = time.time()
                for second in range(PAGE_DEADLINE_SECONDS):
                    answer = await ingest.post(
                        failing_batch(rotated, f"rotated-{second}"),
                        source=f"127.77.{second % 20}.1",
                    )
                    assert answer.status_code == 202, answer.text
                    if receiver.pages():
                        break
                    await asyncio.sleep(1)
                return await _stop(flooding, stop), started
            finally:
                stop.set()
                await asyncio.gather(flooding, return_exceptions=True)
                await ingest.aclose()

        statuses, rotated_at = asyncio.run(play())
        pages = receiver.pages()

    assert pages, f"no page within {PAGE_DEADLINE_SECONDS}s of the rotation"
    first = pages[0]
    assert first.received_at > rotated_at
    assert [a["labels"]["alertname"] for a in first.alerts] == ["PinwatchRotationBreakage"]
    labels = first.alerts[0]["labels"]
    assert (labels["app"], labels["host"]) == (TEST_APP, TEST_HOST)
    # The flood was held to its device rate: its burst and about one a second got through.
    seconds = FLOOD_WATCH_SECONDS + (pages[0].received_at - rotated_at)
    burst = stack.config.ingest_device_rate_limit_burst
    rate = stack.config.ingest_device_rate_limit_per_second
    assert statuses[202] <= burst + rate * (seconds + 10), statuses
    assert statuses[429] > 10 * statuses[202], statuses
    assert statuses[NO_RETRY_AFTER] == 0


async def _stop(task: asyncio.Task[Counter[int]], stop: asyncio.Event) -> Counter[int]:
    stop.set()
    return await task
