"""Meta-monitoring against the real engines: Prometheus 2.42 evaluating the shipped rules and
scraping itself and Alertmanager 0.25 under the job names of alerts/config.py, Alertmanager
with the shipped routing.

- The dead man's switch: PinwatchWatchdog reaches the heartbeat receiver, again and again, and
  never the on-call one.
- Every Prometheus and Alertmanager metric the monitoring rules read exists under that job, with
  the labels the rules select and group by (`rule_group` as "file;group", `integration`, ...):
  each selector of the rules, run as written, returns series.
- Real failures show: a pinwatch rule group that fails to evaluate, and page notifications to a
  receiver nobody listens on, make their alerts pending (their `for` is minutes: promtool cases
  in alerts/tests/monitoring.test.yml cover firing and the near misses).

Only the heartbeat's and pages' Alertmanager timing is shortened (seconds instead of minutes) so
the repeats and failures show within the test; the routes and receivers are the shipped ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import yaml

from alerts import generate
from alerts.alertmanager import alertmanager_config
from alerts.config import CONFIG
from alerts.rules import PINWATCH_RULE_GROUPS, WATCHDOG, monitoring_alerts
from devstack.localkafka import free_port
from devstack.monitoring import RULE_FILES, LocalAlertmanager, LocalPrometheus
from devstack.stack import PageReceiver
from tests.support.polling import wait_until

pytestmark = [pytest.mark.timeout(300)]

INTERVAL_SECONDS = 1.0
# A pinwatch-named group whose recording rule fails at every evaluation: two series that differ
# only in their name collide once the rule renames them.
BROKEN_RULES = """\
groups:
  - name: pinwatch.broken
    rules:
      - record: job:pinwatch_broken:value
        expr: '{__name__=~"prometheus_tsdb_head_series|prometheus_tsdb_head_chunks"}'
"""


@dataclass
class Monitored:
    prometheus: LocalPrometheus
    alertmanager: LocalAlertmanager
    receiver: PageReceiver

    def received(self, path: str) -> list[str]:
        return [
            item["labels"]["alertname"]
            for got in list(self.receiver.received)
            if got.path == path
            for item in got.alerts
        ]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.prometheus.alerts() if a["labels"]["alertname"] == name]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    tmp = tmp_path_factory.mktemp("meta")
    receiver = PageReceiver(free_port(), lambda _line: None)
    receiver.start()
    broken = tmp / "broken.yml"
    broken.write_text(BROKEN_RULES)
    timing = replace(
        CONFIG,
        heartbeat_group_interval="2s",
        heartbeat_repeat_interval="2s",
        page_group_wait="0s",
        page_group_interval="5s",
    )
    config = alertmanager_config(
        # Nobody listens there: every page notification fails.
        oncall_webhook_url=f"http://127.0.0.1:{free_port()}/page",
        webhook_url=f"{receiver.url}/notify",
        heartbeat_url=f"{receiver.url}/heartbeat",
        c=timing,
    )
    alertmanager = LocalAlertmanager(tmp / "alertmanager", config=generate.dump(config))
    prometheus_port = free_port()
    prometheus = LocalPrometheus(
        tmp / "prometheus",
        port=prometheus_port,
        jobs={
            CONFIG.prometheus_job: [f"127.0.0.1:{prometheus_port}"],
            CONFIG.alertmanager_job: [alertmanager.url.removeprefix("http://")],
        },
        scrape_interval=INTERVAL_SECONDS,
        evaluation_interval=INTERVAL_SECONDS,
        rule_files=[*RULE_FILES, broken],
        alertmanager_url=alertmanager.url,
    )
    try:
        alertmanager.start()
        prometheus.start()
        yield Monitored(prometheus, alertmanager, receiver)
    finally:
        prometheus.stop()
        alertmanager.stop()
        receiver.stop()


def test_the_watchdog_beats_at_the_heartbeat_again_and_again(monitored: Monitored) -> None:
    assert wait_until(lambda: len(monitored.received("/heartbeat")) >= 3, timeout=90), (
        monitored.received("/heartbeat")
    )
    assert set(monitored.received("/heartbeat")) == {WATCHDOG}
    assert WATCHDOG not in monitored.received("/notify")
    # The heartbeat tells a live pipeline from a dead one: it says "firing" every time.
    beats = [got for got in list(monitored.receiver.received) if got.path == "/heartbeat"]
    assert all(item["status"] == "firing" for got in beats for item in got.alerts)


def _selectors(expr: str) -> list[tuple[str, list[str]]]:
    """(selector as written, labels the expression groups it by) for each Prometheus or
    Alertmanager metric (and process metric of either) an expression reads."""
    by = re.findall(r"by \(([^)]*)\)", expr)
    grouped = [label.strip() for labels in by for label in labels.split(",")]
    found = re.findall(r"((?:prometheus|alertmanager|process)_\w+\{[^}]*\})", expr)
    return [(selector, grouped) for selector in found]


def test_every_metric_the_monitoring_rules_read_exists_with_its_labels(
    monitored: Monitored,
) -> None:
    selectors = [s for rule in monitoring_alerts(CONFIG) for s in _selectors(rule["expr"])]
    assert len(selectors) >= 6
    for selector, grouped in selectors:
        series = wait_until(lambda s=selector: monitored.prometheus.query(s), timeout=60)
        assert series, f"{selector}: no such series in Prometheus 2.42 / Alertmanager 0.25"
        for labels in (item["metric"] for item in series):
            assert set(grouped) <= set(labels), (selector, grouped, labels)
    # Prometheus labels rule groups "file;group": the rules' pinwatch-only filter matches all
    # three shipped groups (and the test's broken one), by name.
    groups = {
        item["metric"]["rule_group"].rpartition(";")[2]
        for item in monitored.prometheus.query(
            f'prometheus_rule_evaluation_failures_total{{job="{CONFIG.prometheus_job}",'
            f"{PINWATCH_RULE_GROUPS}}}"
        )
    }
    shipped = {group["name"] for group in yaml.safe_load(RULE_FILES[0].read_text())["groups"]}
    assert groups == shipped | {"pinwatch.broken"}


def test_real_failures_make_their_alerts_pending(monitored: Monitored) -> None:
    def pending(name: str) -> list[dict[str, Any]]:
        return [a for a in monitored.alerts(name) if a["state"] == "pending"]

    # The broken group fails at every evaluation; the shipped groups do not.
    failing = wait_until(lambda: pending("PinwatchRuleEvaluationsFailing"), timeout=60)
    assert {a["labels"]["rule_group"].rpartition(";")[2] for a in failing} == {"pinwatch.broken"}
    # A page that nobody receives: post one, Alertmanager fails to deliver it (after its
    # retries) and Prometheus sees the webhook integration failing.
    probe = {"alertname": "PinwatchMetaProbe", "severity": "page", "component": "pipeline"}
    httpx.post(
        f"{monitored.alertmanager.url}/api/v2/alerts", json=[{"labels": probe}], timeout=10
    ).raise_for_status()
    failing = wait_until(lambda: pending("PinwatchAlertmanagerNotificationsFailing"), timeout=120)
    assert {a["labels"]["integration"] for a in failing} == {"webhook"}
    # Healthy meanwhile: Prometheus knows its Alertmanager, scrapes both jobs and sends (what
    # it dropped at its start, before it found Alertmanager, does not count).
    assert monitored.alerts("PinwatchAlertmanagerNotConnected") == []
    assert monitored.alerts("PinwatchMonitoringTargetAbsent") == []
    assert monitored.alerts("PinwatchPrometheusNotificationsFailing") == []
