"""Pinning overview: the on-call engineer's first screen after a page.

Answers, per app and host: are pins failing now, for how many devices, rotation or
interception, is it pin failures or just the network, which app versions and platforms, and
which pin (primary, backup, none) clients match.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.common import (
    ALERTS_SELECTOR,
    APP_HOST,
    alert_links,
    graph,
    grid,
    prometheus_dashboard,
    promql,
    row,
    runbook_link,
    single_stat,
)

UID = "pinwatch-overview"
TITLE = "pinwatch / Pinning overview"

VALIDATIONS = "pinwatch_pin_validations_total"
RATE = "[$__rate_interval]"


def _rate(selector: str, by: str) -> str:
    total = f"sum by ({by})" if by else "sum"
    return f"{total} (rate({VALIDATIONS}{{{selector}}}{RATE}))"


def _global_sum(metric: str, per: str, by: str = "") -> str:
    """A failing-devices gauge added over the selected apps and hosts. It is global (read from
    ClickHouse, the same on every consumer replica), so `max` per label set first: a plain sum
    would count each device once per replica."""
    total = f"sum by ({by})" if by else "sum"
    return f"{total} (max by ({per}) ({metric}{{{APP_HOST}}}))"


def failure_share(by: str, extra: str = "") -> str:
    """Share of pin validations that failed (pin_mismatch or chain_invalid). Numerator and
    denominator are aggregated separately and then divided, so a ratio is never averaged."""
    selector = APP_HOST + extra
    failed = _rate(selector + ', result!="ok"', by)
    total = _rate(selector, by)
    return f"{failed}\n/\n{total}"


def build(runbook_url: str) -> dashboard.Dashboard:
    rb = runbook_url
    d = prometheus_dashboard(
        UID,
        TITLE,
        "On-call view of TLS pin validation: failure share, failing devices by cause, pin "
        "failures apart from network errors, pin match, active alerts.",
        rb,
    )

    d = (
        d.with_row(row(100, "Now"))
        .with_panel(
            single_stat(
                1,
                "Enforced pin failure share",
                "Share of enforced pin validations that failed (no pin matched, or the chain "
                "was invalid) over the rate window: the share of users who lose the API now.",
                "percentunit",
                [promql(failure_share("", ', enforced="true"'))],
                thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")],
                links=alert_links(rb, "PinwatchPinFailureRateHigh"),
            )
        )
        .with_panel(
            single_stat(
                2,
                "Devices failing pins (5m)",
                "Distinct devices with an enforced pin failure in the last 5 minutes, all "
                "causes, per app and host, added over the selected ones "
                "(pinwatch_failing_devices_all_causes, counted in ClickHouse by the consumer; "
                "every consumer replica exports the same figure, hence max across them).",
                "short",
                [promql(_global_sum("pinwatch_failing_devices_all_causes", "app, host"))],
                thresholds=[(None, "green"), (1, "orange"), (50, "red")],
            )
        )
        .with_panel(
            single_stat(
                3,
                "Networks failing pins (5m)",
                "Distinct client network prefixes with an enforced pin failure in the last 5 "
                "minutes, all causes, per app and host, added over the selected ones. Many "
                "networks point to a rotation; one or two to interception.",
                "short",
                [promql(_global_sum("pinwatch_failing_networks_all_causes", "app, host"))],
                thresholds=[(None, "green"), (1, "orange"), (10, "red")],
            )
        )
        .with_panel(
            single_stat(
                4,
                "Firing pinwatch alerts",
                "Number of pinwatch alerts firing now (Prometheus ALERTS series). 0 is good.",
                "short",
                [promql(f'count(ALERTS{{alertstate="firing", {ALERTS_SELECTOR}}}) or vector(0)')],
                thresholds=[(None, "green"), (1, "red")],
                links=[runbook_link(rb)],
            )
        )
        .with_row(row(101, "Pin failures"))
        .with_panel(
            graph(
                5,
                "Pin failure share per host",
                "Per host: failed enforced pin validations / all enforced pin validations. "
                "A step up on one host right after a certificate change is a rotation breaking "
                "pinning.",
                "percentunit",
                [promql(failure_share("host", ', enforced="true"'), "{{host}}")],
                links=alert_links(rb, "PinwatchRotationBreakage", "PinwatchPinFailureRateHigh"),
            )
        )
        .with_panel(
            graph(
                15,
                "Prober: edges by pin match",
                "Per host, how many edges (addresses the host resolves to) served a chain "
                "matching the host's pin set on the primary key, the backup key, or none, at "
                "pinwatch probe's last handshake with each. Beside the client failure share: an "
                "edge moving to `none` pages before any client fails; `backup` during a drill "
                "with a flat failure share shows the apps accept the backup. Edges the prober "
                "cannot reach are not counted here (pinwatch_probe_errors_total).",
                "short",
                [
                    promql(
                        "count by (host, pin_match) (max by (host, address, pin_match) "
                        '(pinwatch_probe_pin_match{host=~"$host", pin_set="policy"}) == 1)',
                        "{{host}} {{pin_match}}",
                    )
                ],
                stacked=True,
                links=alert_links(
                    rb,
                    "PinwatchProbeUnpinnedKey",
                    "PinwatchProbeUnpinnedKeyReportOnly",
                    "PinwatchRotationBreakage",
                ),
            )
        )
        .with_panel(
            graph(
                6,
                "Failing devices by cause",
                "Distinct devices failing pins in the last 5 minutes, by cause: "
                "rotation_suspected (publicly trusted chain with unpinned keys: page), "
                "interception_suspected (private root, e.g. a TLS-inspecting proxy: ticket), "
                "unknown.",
                "short",
                [
                    promql(
                        _global_sum("pinwatch_failing_devices", "app, host, cause", "host, cause"),
                        "{{host}} {{cause}}",
                    )
                ],
                links=alert_links(rb, "PinwatchRotationBreakage", "PinwatchInterceptionSuspected"),
            )
        )
        .with_panel(
            graph(
                7,
                "Pin failures by result and cause",
                "Pin validation failures per second (each report weighted by its count), by "
                "result and cause. Network errors are on the panel to the right, never here.",
                "cps",
                [
                    promql(
                        _rate(APP_HOST + ', result!="ok"', "result, cause, enforced"),
                        "{{result}} {{cause}} enforced={{enforced}}",
                    )
                ],
            )
        )
        .with_panel(
            graph(
                8,
                "Network errors by category",
                "Network errors per second reported by apps (dns, tcp, tls, http, timeout, "
                "other). Kept apart from pin failures: a network outage is not a pinning problem.",
                "cps",
                [
                    promql(
                        "sum by (category) (rate(pinwatch_network_errors_total"
                        f"{{{APP_HOST}}}{RATE}))",
                        "{{category}}",
                    )
                ],
            )
        )
        .with_row(row(102, "Who is affected"))
        .with_panel(
            graph(
                9,
                "Pin failure share by app version",
                "Failed / all pin validations per app version (enforced and report-only). "
                "Versions beyond the most recent few per app fold into `other`.",
                "percentunit",
                [promql(failure_share("app, app_version"), "{{app}} {{app_version}}")],
                links=alert_links(rb, "PinwatchAppVersionFailing"),
            )
        )
        .with_panel(
            graph(
                10,
                "Pin failure share by platform",
                "Failed / all pin validations per platform (ios, android, web, ...).",
                "percentunit",
                [promql(failure_share("platform"), "{{platform}}")],
            )
        )
        .with_panel(
            graph(
                13,
                "Pin failures by platform",
                "Pin validation failures per second per platform, next to the network errors "
                "of the same platforms: a platform with many network errors and few pin "
                "failures has a network problem, not a pinning one.",
                "cps",
                [promql(_rate(APP_HOST + ', result!="ok"', "platform"), "{{platform}}")],
            )
        )
        .with_panel(
            graph(
                14,
                "Network errors by platform",
                "Network errors per second per platform (pinwatch_network_errors_total has "
                "no app-version label, so the breakdown stops at platform).",
                "cps",
                [
                    promql(
                        "sum by (platform) (rate(pinwatch_network_errors_total"
                        f"{{{APP_HOST}}}{RATE}))",
                        "{{platform}}",
                    )
                ],
            )
        )
        .with_row(row(104, "Before clients fail: prober and Certificate Transparency"))
        .with_panel(
            graph(
                16,
                "Prober: failed handshakes by reason",
                "Handshakes pinwatch probe could not complete, per second, by host and reason "
                "(timeout, refused, tls: not a TLS port, unreachable, dns). Not pin failures: "
                "the prober cannot tell which key such an edge serves.",
                "cps",
                [
                    promql(
                        "sum by (host, reason) (rate(pinwatch_probe_errors_total"
                        f'{{host=~"$host"}}{RATE}))',
                        "{{host}} {{reason}}",
                    )
                ],
                links=alert_links(rb, "PinwatchProbeEdgeFailing", "PinwatchProbeDown"),
            )
        )
        .with_panel(
            grid(
                17,
                "CT: certificates issued on unpinned keys",
                "Certificates and precertificates for policy hosts, found by pinwatch ct watch "
                "in Certificate Transparency logs, still valid, whose chain has no pinned key: "
                "log, entry index, not-before and the leaf's pin. Empty is good.",
                "none",
                [
                    promql(
                        "max by (host, log, index, not_before, pin) "
                        '(pinwatch_ct_unpinned_certificate_info{host=~"$host"})',
                        "{{host}}",
                        instant=True,
                    ).format(PromQueryFormat.TABLE)
                ],
                source="prometheus",
                hide_columns=("Time", "Value"),
                links=alert_links(rb, "PinwatchCertificateUnpinnedKey", "PinwatchCtLogFailing"),
            )
        )
        .with_row(row(103, "Pins"))
        .with_panel(
            graph(
                11,
                "Pin match over time",
                "Pin validations per second by which pin of the host's set matched: primary "
                "(normal), backup (the backup key is now served: plan a new backup), none (no "
                "pin matched: failure). Chain-invalid reports (trust failed before pins were "
                "checked) are left out.",
                "cps",
                [
                    promql(
                        _rate(APP_HOST + ', pin_match!="", result!="chain_invalid"', "pin_match"),
                        "{{pin_match}}",
                    )
                ],
                stacked=True,
                links=alert_links(rb, "PinwatchBackupPinServed"),
            )
        )
        .with_panel(
            grid(
                12,
                "Active pinwatch alerts",
                "pinwatch alerts firing or pending now, with their labels. Severity page goes "
                "to on-call, ticket and info elsewhere; each alert's runbook_url points into "
                "docs/runbook.md.",
                "none",
                [
                    promql(
                        f'ALERTS{{alertstate=~"firing|pending", {ALERTS_SELECTOR}}}',
                        "{{alertname}}",
                        instant=True,
                    ).format(PromQueryFormat.TABLE)
                ],
                source="prometheus",
                hide_columns=("Time", "Value", "__name__"),
                links=[runbook_link(rb)],
            )
        )
    )
    return d
