"""The shipped routing and inhibit rules in a real Alertmanager: alerts posted to its API, the
notifications a webhook receives, and which alerts it holds back as inhibited."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts import generate
from alerts.alertmanager import alertmanager_config
from alerts.rules import WATCHDOG
from devstack.localkafka import free_port
from devstack.monitoring import CONSUMER_JOB, LocalAlertmanager
from devstack.stack import PageReceiver
from tests.support.polling import wait_until


@pytest.fixture
def receiver() -> Iterator[PageReceiver]:
    hook = PageReceiver(free_port(), lambda _line: None)
    hook.start()
    try:
        yield hook
    finally:
        hook.stop()


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: PageReceiver) -> Iterator[LocalAlertmanager]:
    config = alertmanager_config(
        oncall_webhook_url=f"{receiver.url}/page",
        webhook_url=f"{receiver.url}/notify",
        heartbeat_url=f"{receiver.url}/heartbeat",
    )
    with LocalAlertmanager(tmp_path / "am", config=generate.dump(config)) as am:
        yield am


def alert(name: str, severity: str, component: str, **labels: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "labels": {"alertname": name, "severity": severity, "component": component, **labels},
        "annotations": {"summary": name},
        "startsAt": now.isoformat(),
        "endsAt": (now + dt.timedelta(minutes=10)).isoformat(),
    }


def post(am: LocalAlertmanager, *alerts: dict[str, Any]) -> None:
    httpx.post(f"{am.url}/api/v2/alerts", json=list(alerts), timeout=10).raise_for_status()


def states(am: LocalAlertmanager) -> dict[tuple[str, str], str]:
    """(alertname, host or job) -> "active" | "suppressed" (inhibited)."""
    out = {}
    for item in am.alerts():
        labels = item["labels"]
        key = (labels["alertname"], labels.get("host") or labels.get("job", ""))
        state = item["status"]["state"]
        assert state != "suppressed" or item["status"]["inhibitedBy"], item
        out[key] = state
    return out


def test_rotation_silences_the_generic_pages_for_its_host_only(
    alertmanager: LocalAlertmanager, receiver: PageReceiver
) -> None:
    app = {"app": "com.example.pinned"}
    post(
        alertmanager,
        alert("PinwatchRotationBreakage", "page", "pinning", host="api.a.test", **app),
        alert("PinwatchPinFailureRateHigh", "page", "pinning", host="api.a.test", **app),
        alert(
            "PinwatchAppVersionFailing",
            "page",
            "pinning",
            host="api.a.test",
            app_version="5.2.0",
            **app,
        ),
        alert("PinwatchPinFailureRateHigh", "page", "pinning", host="api.b.test", **app),
        alert("PinwatchAppVersionFailing", "page", "pinning", host="api.c.test", **app),
        alert("PinwatchPinFailureRateHigh", "page", "pinning", host="api.c.test", **app),
        alert("PinwatchInterceptionSuspected", "ticket", "pinning", host="api.b.test", **app),
    )
    assert wait_until(lambda: len(states(alertmanager)) == 7)
    expected = {
        ("PinwatchRotationBreakage", "api.a.test"): "active",
        ("PinwatchPinFailureRateHigh", "api.a.test"): "suppressed",
        ("PinwatchAppVersionFailing", "api.a.test"): "suppressed",
        ("PinwatchPinFailureRateHigh", "api.b.test"): "active",
        ("PinwatchAppVersionFailing", "api.c.test"): "active",
        ("PinwatchPinFailureRateHigh", "api.c.test"): "suppressed",
        ("PinwatchInterceptionSuspected", "api.b.test"): "active",
    }
    assert wait_until(lambda: states(alertmanager) == expected), states(alertmanager)

    # The on-call receiver gets one notification per app and host, without the inhibited
    # alerts. (Tickets wait a minute before their first notification; their routing is checked
    # with `amtool config routes test` in test_alerts.py.)
    def delivered() -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        for page in receiver.received:
            for item in page.alerts:
                got.setdefault(page.path, []).append(
                    f"{item['labels']['alertname']}@{item['labels']['host']}"
                )
        return got

    wait_until(lambda: len(delivered().get("/page", [])) >= 3, timeout=60)
    assert sorted(delivered()["/page"]) == [
        "PinwatchAppVersionFailing@api.c.test",
        "PinwatchPinFailureRateHigh@api.b.test",
        "PinwatchRotationBreakage@api.a.test",
    ]


def test_a_pipeline_outage_silences_what_depends_on_it(alertmanager: LocalAlertmanager) -> None:
    app = {"app": "com.example.pinned"}
    post(
        alertmanager,
        alert("PinwatchPinFailureRateHigh", "page", "pinning", host="api.a.test", **app),
        alert("PinwatchBackupPinServed", "info", "pinning", host="api.a.test", **app),
        alert("PinwatchScrapeTargetDown", "page", "pipeline", job=CONSUMER_JOB, instance="c:1"),
        alert("PinwatchConsumerLagGrowing", "page", "pipeline", job=CONSUMER_JOB),
        # Another job's pipeline alert is not explained by this target being down.
        alert("PinwatchIngestProduceFailing", "page", "pipeline", job="pinwatch-ingest"),
    )
    expected = {
        ("PinwatchPinFailureRateHigh", "api.a.test"): "suppressed",
        ("PinwatchBackupPinServed", "api.a.test"): "suppressed",
        ("PinwatchScrapeTargetDown", CONSUMER_JOB): "active",
        ("PinwatchConsumerLagGrowing", CONSUMER_JOB): "suppressed",
        ("PinwatchIngestProduceFailing", "pinwatch-ingest"): "active",
    }
    assert wait_until(lambda: states(alertmanager) == expected), states(alertmanager)


def test_probe_page_and_client_rotation_page_are_one_notification(
    alertmanager: LocalAlertmanager, receiver: PageReceiver
) -> None:
    """The prober's page and the client-side pages of the same incident (same app and host)
    share one group; the prober's silences the client-side ones, so the on-call receives one
    notification. The pipeline being down does not silence the prober: it does not depend on
    it."""
    app = {"app": "com.example.pinned"}
    post(
        alertmanager,
        alert("PinwatchProbeUnpinnedKey", "page", "prober", host="api.a.test", **app),
        alert("PinwatchRotationBreakage", "page", "pinning", host="api.a.test", **app),
        alert("PinwatchPinFailureRateHigh", "page", "pinning", host="api.a.test", **app),
        # Another host's client-side rotation is another incident.
        alert("PinwatchRotationBreakage", "page", "pinning", host="api.b.test", **app),
        alert("PinwatchScrapeTargetDown", "page", "pipeline", job=CONSUMER_JOB, instance="c:1"),
    )
    expected = {
        ("PinwatchProbeUnpinnedKey", "api.a.test"): "active",
        ("PinwatchRotationBreakage", "api.a.test"): "suppressed",
        ("PinwatchPinFailureRateHigh", "api.a.test"): "suppressed",
        # (suppressed by the pipeline outage, as every client-side pinning alert is)
        ("PinwatchRotationBreakage", "api.b.test"): "suppressed",
        ("PinwatchScrapeTargetDown", CONSUMER_JOB): "active",
    }
    assert wait_until(lambda: states(alertmanager) == expected), states(alertmanager)

    def pages_for(host: str) -> list[list[str]]:
        return [
            [item["labels"]["alertname"] for item in page.alerts]
            for page in receiver.pages()
            if page.payload.get("groupLabels", {}).get("host") == host
        ]

    assert wait_until(lambda: pages_for("api.a.test"), timeout=60)
    assert pages_for("api.a.test") == [["PinwatchProbeUnpinnedKey"]]
    (page,) = [p for p in receiver.pages() if p.payload["groupLabels"].get("host")]
    assert page.payload["groupLabels"] == {"app": "com.example.pinned", "host": "api.a.test"}


def test_the_watchdog_reaches_only_the_heartbeat_and_is_never_inhibited(
    alertmanager: LocalAlertmanager, receiver: PageReceiver
) -> None:
    app = {"app": "com.example.pinned"}
    post(
        alertmanager,
        alert(WATCHDOG, "info", "monitoring"),
        # A pipeline outage inhibits every pinning alert; it must not touch the heartbeat.
        alert("PinwatchScrapeTargetDown", "page", "pipeline", job=CONSUMER_JOB, instance="c:1"),
        alert("PinwatchRotationBreakage", "page", "pinning", host="api.a.test", **app),
    )
    expected = {
        (WATCHDOG, ""): "active",
        ("PinwatchScrapeTargetDown", CONSUMER_JOB): "active",
        ("PinwatchRotationBreakage", "api.a.test"): "suppressed",
    }
    assert wait_until(lambda: states(alertmanager) == expected), states(alertmanager)

    def names(path: str) -> list[str]:
        return [
            item["labels"]["alertname"]
            for got in list(receiver.received)
            if got.path == path
            for item in got.alerts
        ]

    # group_wait 0s: the heartbeat leaves at once; the page waits its 10 s group_wait.
    assert wait_until(lambda: names("/heartbeat") and names("/page"), timeout=60)
    assert set(names("/heartbeat")) == {WATCHDOG}
    assert names("/page") == ["PinwatchScrapeTargetDown"]
    assert WATCHDOG not in names("/notify")
