"""The one place alert thresholds, windows and `for` durations are named.

`python -m alerts.generate` turns this into alerts/rules.yml and alerts/alertmanager.yml; a test
fails when the committed files differ from what this produces. Change a number here, regenerate,
and update the `promtool test rules` cases in alerts/tests/ that pin it down.

Time to page is the sum of several of these (see docs/alerting.md): the page-path values are
chosen so a rotation that breaks pinning pages within two minutes at one failing device a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from pinwatch.settings import Settings


@dataclass(frozen=True)
class AlertConfig:
    # --- windows ------------------------------------------------------------------------------
    # Page rules read rates over 2 minutes: 8 samples at the production 15 s scrape interval,
    # short enough that a step change shows within one or two scrapes.
    page_window: str = "2m"
    # Tickets and info answer "is this still going on", not "wake someone up": a longer window
    # smooths daily traffic swings.
    ticket_window: str = "10m"

    # --- rotation breakage (page) -------------------------------------------------------------
    # Distinct devices (last 5 minutes) failing with a publicly trusted chain whose key the
    # policy does not pin. Ten is reached in ten seconds at one failing device a second.
    rotation_min_devices: int = 10
    # ... on several client networks: one network seeing an odd chain is that network's
    # problem (a captive portal, a proxy), a rotation is seen everywhere.
    rotation_min_networks: int = 3
    # Share of the host's enforced validations failing that way: rules out a handful of odd
    # clients on a busy host.
    rotation_min_share: float = 0.05
    rotation_for: str = "30s"

    # --- pinning failure rate high (page) -----------------------------------------------------
    failure_min_share: float = 0.10  # normal is well under 1 %
    failure_min_rate: float = 0.1  # failures a second: below this a share is noise
    # Longer than rotation_for: when a rotation causes it, the rotation page arrives first and
    # inhibits this one.
    failure_for: str = "2m"

    # --- a new app version failing (page) -----------------------------------------------------
    version_min_share: float = 0.20  # of that version's enforced validations
    version_min_rate: float = 0.05  # failures a second on that version
    version_others_max_share: float = 0.02  # the host's other versions stay below this
    version_for: str = "1m"

    # --- interception suspected (ticket) ------------------------------------------------------
    interception_max_networks: int = 3  # few networks: a corporate proxy, not the world
    interception_min_devices: int = 3
    interception_for: str = "5m"

    # --- backup pin now served (info) ---------------------------------------------------------
    backup_for: str = "5m"

    # --- report-only would-fail (ticket) ------------------------------------------------------
    # The same bar that blocks moving a host to enforcement in `pinwatch rollout` (there a
    # share of devices, here of validations): one number, defined in settings.
    report_only_max_share: float = Settings.model_fields["rollout_max_would_fail_share"].default
    report_only_min_rate: float = 0.1  # report-only validations a second to judge a share
    report_only_for: str = "15m"

    # --- pipeline (page) ----------------------------------------------------------------------
    # Scrape job names every rule and panel selects on (`up{job=...}`): this mixin owns them, and
    # whoever configures Prometheus (the local stack, a ServiceMonitor) must label the targets so.
    ingest_job: str = "pinwatch-ingest"
    consumer_job: str = "pinwatch-consumer"
    ingest_silence_window: str = "5m"
    ingest_silence_for: str = "5m"
    produce_error_max_share: float = 0.05  # of ingest requests answered
    produce_error_for: str = "2m"
    lag_min_records: int = 1000
    lag_window: str = "5m"
    lag_for: str = "5m"
    insert_stale_seconds: int = 120
    insert_stale_for: str = "1m"
    target_down_for: str = "1m"

    # --- prober and CT watch (page, ticket) -----------------------------------------------------
    # Scrape job names of `pinwatch probe` and `pinwatch ct watch`.
    probe_job: str = "pinwatch-probe"
    ct_job: str = "pinwatch-ct"
    # An edge's pin result is read as its worst over this window, so an address whose backends
    # disagree (one sees the old key, one the new) keeps the page up instead of resolving and
    # paging again at every flip. It also delays the resolve by this much.
    probe_window: str = "2m"
    # No wait: one handshake that shows an unpinned key is a fact, not a noisy sample, and the
    # time-to-page budget (60 s with the 15 s probe, scrape and evaluation intervals and the
    # 10 s page group_wait) leaves nothing for one (docs/prober.md).
    probe_unpinned_for: str = "0s"
    # An edge nobody can handshake with hides its pin result: worth a ticket, not a page.
    probe_edge_failing_for: str = "15m"
    probe_down_for: str = "10m"
    # A CT log that cannot be read (unreachable, bad signature, bad data) for this long.
    ct_log_failing_for: str = "30m"

    # --- Alertmanager timing ------------------------------------------------------------------
    # Pages: 10 s lets the alerts of one incident (rotation and failure rate for one host)
    # land in one group, so inhibition drops the generic one before anything is sent.
    page_group_wait: str = "10s"
    page_group_interval: str = "1m"
    page_repeat_interval: str = "1h"
    ticket_group_wait: str = "1m"
    ticket_group_interval: str = "5m"
    ticket_repeat_interval: str = "12h"
    info_group_wait: str = "1m"
    info_group_interval: str = "10m"
    info_repeat_interval: str = "24h"

    # Where runbook links point (alert annotations, dashboards, the Kubernetes objects): the
    # PINWATCH_RUNBOOK_URL setting, which `python -m alerts.generate` and
    # `python -m dashboards.generate` read; this default is the project's published runbook.
    runbook: str = Settings.model_fields["runbook_url"].default


CONFIG = AlertConfig()

# What the committed alerts/alertmanager.yml is rendered with: a deployment that mounts the
# PagerDuty and Opsgenie keys as secret files (Alertmanager reads them when it notifies, so the
# file is valid without them) and posts tickets and info to a webhook. `pinwatch up` and the
# tests render their own from Settings (alerts.alertmanager.alertmanager_config_from_settings).
DEPLOYMENT_EXAMPLE: dict[str, str] = {
    "pagerduty_routing_key_file": "/etc/alertmanager/secrets/pagerduty-routing-key",
    "opsgenie_api_key_file": "/etc/alertmanager/secrets/opsgenie-api-key",
    "oncall_webhook_url": "",
    "webhook_url": "http://pinwatch-alerts.example.com/alertmanager",
}

# The AlertmanagerConfig (deploy/k8s/base/monitoring, alerts/kubernetes.py) is rendered with
# the same receivers, each reading its key or URL from the Secret `pinwatch-alertmanager`:
# these are that Secret's keys (docs/deploy.md shows the `kubectl create secret` command).
KUBERNETES_RECEIVERS: dict[str, str] = {
    "pagerduty_routing_key_file": "pagerduty-routing-key",
    "opsgenie_api_key_file": "opsgenie-api-key",
    "oncall_webhook_url": "",
    "webhook_url": "webhook-url",
}
