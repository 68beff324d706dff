"""End to end: reports -> ingest -> Kafka -> consumer -> chDB -> /metrics -> a real Prometheus
evaluating the shipped alerts/rules.yml -> a real Alertmanager with the shipped routing and
inhibit rules -> a webhook receiver in this test.

Three incidents, each on a fresh pipeline:
- an unplanned rotation (one new failing device a second, on 20 networks, a publicly trusted
  chain with a new, unpinned key) reaches the on-call receiver as a page; the seconds from the
  first failing report to the delivered page are printed and recorded;
- a corporate TLS interception (private root, one network) and a DNS outage (network errors
  only) page nobody: no page-severity alert even becomes pending in Prometheus while the
  incident's traffic is fully visible there, so none could fire whatever its `for`.

Only Prometheus' scrape and evaluation intervals are shortened (1 s instead of 15 s, unless
PINWATCH_TEST_ALERT_INTERVAL_SECONDS says otherwise); the rules, their `for` durations, the
failing-devices refresh and Alertmanager's group_wait are the shipped ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts import generate
from alerts.alertmanager import alertmanager_config
from alerts.config import CONFIG
from alerts.rules import WATCHDOG
from devstack.certs import CertificateAuthority
from devstack.clients import native_batch, network_error
from devstack.localkafka import free_port
from devstack.monitoring import LocalAlertmanager, LocalPrometheus, pipeline_jobs
from devstack.stack import PageReceiver
from pinwatch.settings import Settings
from tests.support.names import TEST_APP, TEST_HOST, TEST_KEY
from tests.support.payloads import VALIDATIONS_PER_BATCH as COUNT
from tests.support.payloads import failing_batch, ok_batch
from tests.support.pipeline import Pipeline, run_pipeline
from tests.support.polling import eventually

pytestmark = pytest.mark.timeout(420)

# Test-only: 1 s keeps the test short. PINWATCH_TEST_ALERT_INTERVAL_SECONDS=15 runs the same
# incidents with the production scrape and evaluation intervals (docs/alerting.md).
SCRAPE_SECONDS = EVALUATION_SECONDS = float(
    os.environ.get("PINWATCH_TEST_ALERT_INTERVAL_SECONDS", "1")
)
WARM_UP_SECONDS = 15  # normal traffic before the incident: the rates' baseline
QUIET_WATCH_SECONDS = 75  # longer than the rotation takes to page (about a minute)
PAGE_DEADLINE_SECONDS = 240


@dataclass
class Watched:
    pipeline: Pipeline
    prometheus: LocalPrometheus
    alertmanager: LocalAlertmanager
    receiver: PageReceiver
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    async def send(self, source: str, body: dict[str, Any]) -> None:
        """POST a native batch from `source` (a loopback address): ingest keeps its /24 as the
        report's client network, so each 127.x.y.0/24 is one network."""
        client = self.clients.get(source)
        if client is None:
            client = httpx.AsyncClient(
                base_url=self.pipeline.ingest_url,
                transport=httpx.AsyncHTTPTransport(local_address=source),
                timeout=30,
            )
            self.clients[source] = client
        response = await client.post("/v1/reports", json=body, headers={"X-Pinwatch-Key": TEST_KEY})
        assert response.status_code == 202, response.text

    async def query(self, expr: str) -> float:
        result = await asyncio.to_thread(self.prometheus.query, expr)
        return float(result[0]["value"][1]) if result else 0.0

    async def page_alerts_in_prometheus(self) -> list[dict[str, Any]]:
        alerts = await asyncio.to_thread(self.prometheus.alerts)
        return [a for a in alerts if a["labels"].get("severity") == "page"]

    async def alert_names(self) -> set[str]:
        """Alerts pending or firing in Prometheus, but the Watchdog (always firing)."""
        alerts = await asyncio.to_thread(self.prometheus.alerts)
        return {a["labels"]["alertname"] for a in alerts} - {WATCHDOG}

    def pages(self) -> list[dict[str, Any]]:
        return [a for page in self.receiver.pages() for a in page.alerts]


@contextlib.asynccontextmanager
async def watched_pipeline(settings: Settings, tmp_path: Path) -> AsyncIterator[Watched]:
    receiver = PageReceiver(free_port(), lambda _line: None)
    receiver.start()
    config = alertmanager_config(
        oncall_webhook_url=f"{receiver.url}/page", webhook_url=f"{receiver.url}/notify"
    )
    alertmanager = LocalAlertmanager(tmp_path / "alertmanager", config=generate.dump(config))
    prometheus_port = free_port()
    prometheus: LocalPrometheus | None = None
    watched: Watched | None = None
    try:
        async with run_pipeline(settings) as pipeline:
            await asyncio.to_thread(alertmanager.start)
            prometheus = LocalPrometheus(
                tmp_path / "prometheus",
                port=prometheus_port,
                jobs={
                    **pipeline_jobs(
                        ingest_url=pipeline.ingest_url, consumer_url=pipeline.consumer_url
                    ),
                    # Meta-monitoring, as `pinwatch up` scrapes it.
                    CONFIG.prometheus_job: [f"127.0.0.1:{prometheus_port}"],
                    CONFIG.alertmanager_job: [alertmanager.url.removeprefix("http://")],
                },
                scrape_interval=SCRAPE_SECONDS,
                evaluation_interval=EVALUATION_SECONDS,
                alertmanager_url=alertmanager.url,
            )
            # Start blocks (readiness polling): off the loop, which serves what it scrapes.
            await asyncio.to_thread(prometheus.start)
            watched = Watched(pipeline, prometheus, alertmanager, receiver)
            await eventually(lambda: watched.query('min(up{job=~"pinwatch-.*"})'), 30, every=0.5)
            yield watched
    finally:
        if watched is not None:
            for client in watched.clients.values():
                await client.aclose()
        if prometheus is not None:
            await asyncio.to_thread(prometheus.stop)
        await asyncio.to_thread(alertmanager.stop)
        receiver.stop()


async def warm_up(w: Watched, ca: CertificateAuthority) -> None:
    """Normal traffic from ten networks, then wait until Prometheus has scraped it."""
    for second in range(WARM_UP_SECONDS):
        await w.send(f"127.66.{second % 10}.1", ok_batch(ca, f"steady-{second}"))
        await asyncio.sleep(1)
    await w.pipeline.wait_inserted(WARM_UP_SECONDS)
    expected = WARM_UP_SECONDS * COUNT
    seen = await eventually(
        lambda: w.query(f'sum(pinwatch_pin_validations_total{{host="{TEST_HOST}"}}) >= {expected}'),
        30,
        every=0.5,
    )
    assert seen, "Prometheus never saw the warm-up traffic"


async def stays_quiet(w: Watched, seconds: float, send: Callable[[int], Any]) -> None:
    """Send one second of incident traffic at a time for `seconds`, checking every second that
    no page-severity alert is pending or firing in Prometheus and none reached the receiver."""
    for second in range(int(seconds)):
        await send(second)
        pending = await w.page_alerts_in_prometheus()
        assert not pending, f"a page alert became {pending[0]['state']}: {pending[0]['labels']}"
        assert not w.pages(), f"paged: {w.pages()}"
        await asyncio.sleep(1)


async def test_unplanned_rotation_pages_the_oncall(
    make_settings: Callable[..., Settings],
    ca: CertificateAuthority,
    tmp_path: Path,
    record_property: Callable[[str, Any], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    rotated = ca.chain("rotated")  # publicly trusted chain, new key, not in the pin set
    async with watched_pipeline(make_settings(), tmp_path) as w:
        await warm_up(w, ca)
        started = time.time()
        first_page: dict[str, Any] | None = None
        # One new failing device a second, on 20 networks; everyone's validations now fail.
        for second in range(PAGE_DEADLINE_SECONDS):
            await w.send(f"127.77.{second % 20}.1", failing_batch(rotated, f"rotated-{second}"))
            if w.pages():
                first_page = w.pages()[0]
                break
            await asyncio.sleep(1)
        assert first_page is not None, (
            f"no page within {PAGE_DEADLINE_SECONDS}s; Prometheus alerts: "
            f"{await asyncio.to_thread(w.prometheus.alerts)}"
        )
        arrived = w.receiver.pages()[0].received_at
        seconds = arrived - started
        record_property("time_to_page_seconds", round(seconds, 1))
        with capsys.disabled():
            print(
                f"\ntime to page (first failing report -> on-call webhook): {seconds:.1f}s "
                f"(scrape {SCRAPE_SECONDS:g}s, evaluation {EVALUATION_SECONDS:g}s, "
                f"for {CONFIG.rotation_for}, group_wait {CONFIG.page_group_wait})"
            )

    labels, notes = first_page["labels"], first_page["annotations"]
    assert labels == {
        "alertname": "PinwatchRotationBreakage",
        "severity": "page",
        "component": "pinning",
        "app": TEST_APP,
        "host": TEST_HOST,
        "cause": "rotation_suspected",
    }
    assert notes["summary"] == (
        f"{TEST_APP} on {TEST_HOST}: the server presents a key the app does not pin"
    )
    assert (
        " devices on " in notes["description"] and "networks failed pinning" in notes["description"]
    )
    assert notes["runbook_url"] == (
        "https://github.com/pinwatch/pinwatch/blob/main/docs/runbook.md#pinwatchrotationbreakage"
    )
    # The first page is the rotation, alone: nothing generic raced it.
    assert [a["labels"]["alertname"] for a in w.pages()] == ["PinwatchRotationBreakage"]


async def test_corporate_interception_opens_no_page(
    make_settings: Callable[..., Settings], ca: CertificateAuthority, tmp_path: Path
) -> None:
    intercepted = ca.intercepted_chain()  # forged leaf under a private root
    async with watched_pipeline(make_settings(), tmp_path) as w:
        await warm_up(w, ca)

        async def second_of_traffic(second: int) -> None:
            # Everyone else keeps working; 25 employees behind one proxy (one /24) fail. The
            # failures are big enough that a rule blind to cause and networks would page: more
            # than 10 devices and about 7 % of the host's validations (the rotation bars are 10
            # devices and 5 %), yet under the 10 % of the generic failure-rate page.
            await w.send(f"127.66.{second % 10}.1", ok_batch(ca, f"steady-{second % 40}", 25))
            await w.send(
                f"127.88.1.{2 + second % 25}",
                failing_batch(intercepted, f"employee-{second % 25}", count=2),
            )

        await stays_quiet(w, QUIET_WATCH_SECONDS, second_of_traffic)
        # Not quiet for lack of data: Prometheus counted the failures as interception, and the
        # interception ticket is on its way (pending its 5 minute `for`).
        counted = await w.query(
            'sum(pinwatch_pin_validations_total{cause="interception_suspected"})'
        )
        assert counted >= 2 * (QUIET_WATCH_SECONDS - SCRAPE_SECONDS - 5)
        devices = await w.query(
            'app_host_cause:pinwatch_failing_devices:max{cause="interception_suspected"}'
        )
        assert devices >= CONFIG.page_min_devices
        networks = await w.query(
            'app_host_cause:pinwatch_failing_networks:max{cause="interception_suspected"}'
        )
        assert networks == 1
        assert await w.alert_names() == {"PinwatchInterceptionSuspected"}


async def test_dns_outage_opens_no_page(
    make_settings: Callable[..., Settings], ca: CertificateAuthority, tmp_path: Path
) -> None:
    async with watched_pipeline(make_settings(), tmp_path) as w:
        await warm_up(w, ca)

        async def second_of_traffic(second: int) -> None:
            # Nobody can resolve the host: no validation happens, only network errors.
            await w.send(
                f"127.99.{second % 30}.1",
                native_batch(
                    [network_error(TEST_HOST, "dns", count=5, detail="NSURLErrorCannotFindHost")],
                    app=TEST_APP,
                    device=f"offline-{second}",
                ),
            )

        await stays_quiet(w, QUIET_WATCH_SECONDS, second_of_traffic)
        errors = await w.query('sum(pinwatch_network_errors_total{category="dns"})')
        assert errors >= (QUIET_WATCH_SECONDS - SCRAPE_SECONDS - 5) * 5
        assert await w.alert_names() == set()
