"""The one place alert thresholds, windows and `for` durations are named.

`python -m alerts.generate` turns this into alerts/rules.yml and alerts/alertmanager.yml; a test
fails when the committed files differ from what this produces. Change a number here, regenerate,
and update the `promtool test rules` cases in alerts/tests/ that pin it down.

Time to page is the sum of several of these (the budget, term by term, is in docs/alerting.md):
the page-path values are chosen so a rotation that breaks pinning pages within 90 s of the first
failing report at one new failing device a second, at the production 15 s scrape and evaluation
intervals, whatever traffic the host served before.
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

    # --- breadth: every page-severity pinning alert -------------------------------------------
    # Distinct devices AND distinct client networks with enforced failures in the last 5
    # minutes (the consumer's ClickHouse-backed pinwatch_failing_* gauges), never a share of
    # reports alone: one device (a debugging proxy, a spoofed client) can send any number of
    # reports, and one network seeing an odd chain (a captive portal, a proxy) is that network's
    # problem. Ten devices are reached in ten seconds at one new failing device a second.
    # The gauges are read back every `failing_refresh_seconds` (pinwatch/settings.py): 5 s, down
    # from 10 s, since that wait is a term of time to page and the query is small.
    page_min_devices: int = 10
    page_min_networks: int = 3

    # --- rotation breakage (page) -------------------------------------------------------------
    # Besides breadth, failures with a publicly trusted chain whose keys the policy does not pin
    # must be a real part of the host's enforced validations, in either of two ways:
    # - a share over page_window: a steady part of the clients fails (one CDN edge of several
    #   rotated). Rules out a handful of odd clients on a busy host: 4 % of a busy host's
    #   clients seeing an odd public key while the rest succeed is not an outage.
    rotation_min_share: float = 0.05
    # - or most validations fail right now. A rotation stops the host's successes at once, so
    #   failures dominate the last rotation_now_window whatever the traffic before; over
    #   page_window the old successes hide them until they age out (134 s for a host that
    #   served 100 validations a second). 30 s holds two samples at a 15 s scrape interval
    #   (Prometheus aligns scrape timestamps), the fewest rate() takes, so the share is there
    #   one scrape after the successes stopped. A partial problem, where the rest succeed,
    #   never gets near half.
    rotation_now_window: str = "30s"
    rotation_now_min_share: float = 0.5
    # Two evaluations in a row at 15 s: breadth is a 5-minute count and the share is measured
    # over at least two scrapes, so a longer `for` only adds to time to page (docs/alerting.md:
    # with 30 s and a 5 s gauge refresh the worst case was 89 s of the 90 allowed).
    rotation_for: str = "15s"

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

    # --- staged enforcement: the enforced cohort fails more than report-only (page) -----------
    # During a staged rollout (`pinwatch policy set-phase HOST enforce --percent N`) a device's
    # cohort is a hash of its install id (pinwatch/cohort.py): enforcing and report-only devices
    # meet the same servers on the same networks, so their shares of pin mismatches (interception
    # left out) should match. When the enforced cohort's share exceeds the report-only
    # baseline by more than this margin (absolute: 0.02 is two percentage points), enforcement
    # itself breaks connections report-only did not predict (a client build that enforces other
    # pins than it reports): users of the enforced cohort fail. A rotation raises both shares
    # alike and pages as a rotation instead.
    cohort_window: str = "5m"  # a 1 % cohort sends few reports: a longer window than pages use
    cohort_margin: float = 0.02
    cohort_min_rate: float = 0.05  # enforced-cohort mismatches a second: below, noise
    cohort_min_baseline_rate: float = 0.1  # report-only validations a second: a baseline exists
    cohort_for: str = "2m"

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
    # A process that keeps restarting: a new process_start_time_seconds at least
    # `crash_loop_restarts` times within `crash_loop_window`. A crash loop can keep every
    # scrape in a run of failures shorter than target_down_for (a consumer that starts, runs a
    # few seconds and dies, restarted with a growing delay by Kubernetes, systemd or
    # `pinwatch up`), so PinwatchScrapeTargetDown may never fire. One restart (a deploy, an
    # upgrade) is not a loop; on Kubernetes a new pod is a new instance, so a rolling update
    # changes no series. The window is one restart delay of Kubernetes' CrashLoopBackOff at its
    # cap (5 minutes); no `for`, since the window already spans the restarts.
    crash_loop_window: str = "5m"
    crash_loop_restarts: int = 2

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

    # --- meta-monitoring: Prometheus and Alertmanager themselves --------------------------------
    # Job names of Prometheus scraping itself and Alertmanager (the local stack uses these).
    prometheus_job: str = "prometheus"
    alertmanager_job: str = "alertmanager"
    # Failure counters alert when failures keep coming: some in every `window` for `for`. One
    # failed evaluation (a query timeout under load) or one notification retried successfully
    # holds the condition for one window, shorter than `for`, so it never fires.
    rule_failures_window: str = "5m"  # rules are evaluated every 15 s: a broken one fails each
    rule_failures_for: str = "10m"
    # Prometheus sends firing alerts at least every minute (its resend delay, and the Watchdog
    # always fires), so a broken path to Alertmanager fails at least once a minute.
    prometheus_notify_window: str = "5m"
    prometheus_notify_for: str = "10m"
    # Alertmanager retries a failed notification at each group_interval of its route, 10m at
    # most here (info): a 10m window always holds a failure while one keeps failing.
    alertmanager_notify_window: str = "10m"
    alertmanager_notify_for: str = "15m"
    # Prometheus knows no Alertmanager at all: no alert can leave it (the heartbeat stops too).
    alertmanager_discovery_for: str = "5m"

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
    # The Watchdog's heartbeat: sent at once, then again every 1-2 minutes (Alertmanager
    # repeats at a group_interval tick once repeat_interval has passed since the last send), so
    # a heartbeat service set to alarm after 5 minutes of silence notices a dead Prometheus,
    # Alertmanager or path between them within minutes.
    heartbeat_group_wait: str = "0s"
    heartbeat_group_interval: str = "1m"
    heartbeat_repeat_interval: str = "1m"

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
    # None here: a heartbeat URL carries its service's token, and Alertmanager 0.25 reads
    # webhook URLs only from its configuration file. Render your own with
    # PINWATCH_ALERT_HEARTBEAT_URL set (`python -m alerts.generate --alertmanager-out FILE`).
    "heartbeat_url": "",
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
