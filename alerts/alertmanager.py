"""The Alertmanager configuration pinwatch ships: pages to on-call (PagerDuty, Opsgenie, a
webhook), tickets and info to a webhook, grouped by app and host, with the inhibit rules that
keep one incident to one page, and the always-firing PinwatchWatchdog to a heartbeat service
(the dead man's switch: it alarms when the heartbeat stops). Timing comes from
alerts/config.py."""

from __future__ import annotations

from typing import Any

from alerts.config import CONFIG, AlertConfig
from alerts.rules import WATCHDOG
from pinwatch.settings import Settings


def alertmanager_config(
    *,
    pagerduty_routing_key_file: str = "",
    opsgenie_api_key_file: str = "",
    oncall_webhook_url: str = "",
    webhook_url: str = "",
    heartbeat_url: str = "",
    c: AlertConfig = CONFIG,
) -> dict[str, Any]:
    """Alertmanager configuration: pages to the on-call receiver (PagerDuty and Opsgenie when
    their key files are given, plus an optional webhook), tickets and info to the webhook, the
    Watchdog to the heartbeat URL (a receiver with no integration when empty)."""
    oncall: dict[str, Any] = {"name": "oncall"}
    if pagerduty_routing_key_file:
        oncall["pagerduty_configs"] = [
            {"routing_key_file": pagerduty_routing_key_file, "send_resolved": True}
        ]
    if opsgenie_api_key_file:
        oncall["opsgenie_configs"] = [
            {"api_key_file": opsgenie_api_key_file, "priority": "P1", "send_resolved": True}
        ]
    if oncall_webhook_url:
        oncall["webhook_configs"] = [{"url": oncall_webhook_url, "send_resolved": True}]

    def webhook(name: str, url: str = webhook_url, send_resolved: bool = True) -> dict[str, Any]:
        receiver: dict[str, Any] = {"name": name}
        if url:
            receiver["webhook_configs"] = [{"url": url, "send_resolved": send_resolved}]
        return receiver

    pipeline_outage = ["component=pipeline", "severity=page"]
    target_gone = 'alertname=~"PinwatchScrapeTargetDown|PinwatchScrapeTargetAbsent"'
    return {
        "route": {
            "receiver": "tickets",
            # One notification per app and host: the alerts of one incident travel together.
            "group_by": ["app", "host"],
            "group_wait": c.ticket_group_wait,
            "group_interval": c.ticket_group_interval,
            "repeat_interval": c.ticket_repeat_interval,
            "routes": [
                # First, so nothing else ever routes it: the Watchdog never pages and is never
                # grouped with anything. No inhibit rule targets it (component=monitoring).
                {
                    "receiver": "heartbeat",
                    "matchers": [f"alertname={WATCHDOG}"],
                    "group_by": ["alertname"],
                    "group_wait": c.heartbeat_group_wait,
                    "group_interval": c.heartbeat_group_interval,
                    "repeat_interval": c.heartbeat_repeat_interval,
                },
                {
                    "receiver": "oncall",
                    "matchers": ["severity=page"],
                    "group_wait": c.page_group_wait,
                    "group_interval": c.page_group_interval,
                    "repeat_interval": c.page_repeat_interval,
                },
                {"receiver": "tickets", "matchers": ["severity=ticket"]},
                {
                    "receiver": "info",
                    "matchers": ["severity=info"],
                    "group_wait": c.info_group_wait,
                    "group_interval": c.info_group_interval,
                    "repeat_interval": c.info_repeat_interval,
                },
            ],
        },
        "inhibit_rules": [
            # When the pipeline itself is down, pin metrics are partial (some formats, some
            # partitions): the pipeline page is the one to act on.
            {"source_matchers": pipeline_outage, "target_matchers": ["component=pinning"]},
            # A target that cannot be scraped explains that job's other pipeline alerts.
            {
                "source_matchers": [target_gone],
                "target_matchers": [
                    "component=pipeline",
                    target_gone.replace("=~", "!~", 1),
                ],
                "equal": ["job"],
            },
            # A rotation explains the failure rate and any version's failures on that host.
            {
                "source_matchers": ["alertname=PinwatchRotationBreakage"],
                "target_matchers": [
                    'alertname=~"PinwatchPinFailureRateHigh|PinwatchAppVersionFailing"'
                ],
                "equal": ["app", "host"],
            },
            # The prober saw the unpinned key first: the client-side rotation page that follows
            # for the same app and host is the same incident (one notification, not two).
            {
                "source_matchers": ["alertname=PinwatchProbeUnpinnedKey"],
                "target_matchers": [
                    'alertname=~"PinwatchRotationBreakage|PinwatchPinFailureRateHigh"'
                ],
                "equal": ["app", "host"],
            },
            # A failing release explains the host's failure rate: page once, naming the version.
            {
                "source_matchers": ["alertname=PinwatchAppVersionFailing"],
                "target_matchers": ["alertname=PinwatchPinFailureRateHigh"],
                "equal": ["app", "host"],
            },
        ],
        "receivers": [
            oncall,
            webhook("tickets"),
            webhook("info"),
            # A heartbeat service wants the ping, not the "resolved" (which never comes anyway).
            webhook("heartbeat", heartbeat_url, send_resolved=False),
        ],
    }


def alertmanager_config_from_settings(settings: Settings, c: AlertConfig = CONFIG) -> dict:
    return alertmanager_config(
        pagerduty_routing_key_file=settings.alert_pagerduty_routing_key_file,
        opsgenie_api_key_file=settings.alert_opsgenie_api_key_file,
        oncall_webhook_url=settings.alert_oncall_webhook_url.get_secret_value(),
        webhook_url=settings.alert_webhook_url.get_secret_value(),
        heartbeat_url=settings.alert_heartbeat_url.get_secret_value(),
        c=c,
    )


ALERTMANAGER_COMMENT = """\
# Rendered with alerts.config.DEPLOYMENT_EXAMPLE: PagerDuty and Opsgenie keys mounted as secret
# files, tickets and info posted to a webhook. `pinwatch up` and the tests render their own from
# settings (alerts.alertmanager.alertmanager_config_from_settings).
#
# Timing (alerts/config.py):
# - pages: group_wait 10s: long enough that a rotation and the failure-rate alert it causes on
#   the same host share one group (so the inhibition drops the generic one before anything is
#   sent), short enough to keep time to page under 90 s (docs/alerting.md);
#   group_interval 1m: a new host failing in an open incident is told within a minute;
#   repeat_interval 1h: PagerDuty and Opsgenie deduplicate, a reminder an hour is enough.
# - tickets: 1m / 5m / 12h: nobody waits on them; fewer, fuller notifications.
# - info: 1m / 10m / 24h.
# - heartbeat (PinwatchWatchdog only): 0s / 1m / 1m: sent at once, then every 1-2 minutes, so
#   the heartbeat service notices within minutes when Prometheus, Alertmanager or the path
#   between them dies. Never paged, never inhibited. Its receiver has no URL here (the URL holds
#   the heartbeat service's token): render with PINWATCH_ALERT_HEARTBEAT_URL set.
"""
