"""The Prometheus rules pinwatch ships, built from alerts/config.py (written to alerts/rules.yml
by `python -m alerts.generate`).

Recording rules follow `level:metric:operations`: numerators and denominators are aggregated
separately and divided afterwards, so a ratio over several series is the ratio of sums, never an
average of ratios. Counters are per consumer replica and summed; the failing-devices gauges are
global (every replica exports the same figure) and taken with `max`. Every alert carries
`severity` (page, ticket, info), a `component` (pinning, pipeline or monitoring, which the
inhibit rules use), a summary, a description with the app, host and numbers that matter, and a
`runbook_url` to its section of docs/runbook.md.
"""

from __future__ import annotations

from typing import Any

from alerts.config import CONFIG, AlertConfig
from pinwatch.vocabulary import cohort_promql, would_fail_promql

PV = "pinwatch_pin_validations_total"
ENFORCED_FAILURE = 'enforced="true",result!="ok"'
# The staged enforcement comparison (cohort_* in alerts/config.py), per cohort.
COHORT_VALIDATION, COHORT_MISMATCH = cohort_promql()


# The levers a page names, in its `kill_switch` (or `rollback`) annotation, for the alert's own
# app and host: copied from the page and run as is (docs/runbook.md, first step).
def kill_switch(alertname: str) -> str:
    return (
        "pinwatch policy kill {{ $labels.app }} --host {{ $labels.host }} "
        f'--reason "{alertname}: {{{{ $labels.host }}}}"'
    )


def rollback(alertname: str) -> str:
    return (
        "pinwatch policy set-phase {{ $labels.host }} report_only "
        f'--reason "{alertname}: {{{{ $labels.app }}}}"'
    )


ROTATION_FAILURE = f'{ENFORCED_FAILURE},cause="rotation_suspected",pin_match="none"'


def _seconds(duration: str) -> float:
    """Seconds in a Prometheus duration of alerts/config.py ("30s", "5m", "1h")."""
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


def _anchor(alertname: str) -> str:
    # GitHub's heading anchor of "## PinwatchRotationBreakage" in the runbook.
    return alertname.lower()


def _q(expr: str, fmt: str = "humanize", args: str = "$labels.app $labels.host") -> str:
    """A template fragment that reads one number for this alert's labels: `expr` has a `%s`
    for each of `args` (app and host), in that order."""
    return (
        f"{{{{ with printf `{expr}` {args} | query }}}}"
        f"{{{{ . | first | value | {fmt} }}}}{{{{ end }}}}"
    )


def pinning_recording_rules(c: AlertConfig) -> list[dict[str, Any]]:
    w, tw, nw = c.page_window, c.ticket_window, c.rotation_now_window

    def rate(level: str, name: str, selector: str, window: str, by: str) -> dict[str, str]:
        series = f"{PV}{{{selector}}}" if selector else PV
        return {
            "record": f"{level}:{name}:rate{window}",
            "expr": f"sum by ({by}) (rate({series}[{window}]))",
        }

    def ratio(level: str, num: str, den: str, window: str) -> dict[str, str]:
        return {
            "record": f"{level}:{num}:ratio_rate{window}",
            "expr": f"{level}:{num}:rate{window}\n/\n{den}",
        }

    ah, ahv, ahe = "app, host", "app, host, app_version", "app, host, enforced"
    cw = c.cohort_window
    return [
        # Enforced validations: what users experience. Report-only ones have their own below.
        rate("app_host", "pinwatch_enforced_validations", 'enforced="true"', w, ah),
        rate("app_host", "pinwatch_enforced_failures", ENFORCED_FAILURE, w, ah),
        ratio(
            "app_host",
            "pinwatch_enforced_failures",
            f"app_host:pinwatch_enforced_validations:rate{w}",
            w,
        ),
        # Rotation: a public chain (cause) whose keys the policy does not pin (pin_match). A
        # client failing on a pinned key is a client pin-set problem, not a rotation.
        rate("app_host", "pinwatch_rotation_failures", ROTATION_FAILURE, w, ah),
        ratio(
            "app_host",
            "pinwatch_rotation_failures",
            f"app_host:pinwatch_enforced_validations:rate{w}",
            w,
        ),
        # The same share over the short window a rotation dominates at once (alerts/config.py).
        rate("app_host", "pinwatch_enforced_validations", 'enforced="true"', nw, ah),
        rate("app_host", "pinwatch_rotation_failures", ROTATION_FAILURE, nw, ah),
        ratio(
            "app_host",
            "pinwatch_rotation_failures",
            f"app_host:pinwatch_enforced_validations:rate{nw}",
            nw,
        ),
        rate("app_host_version", "pinwatch_enforced_validations", 'enforced="true"', w, ahv),
        rate("app_host_version", "pinwatch_enforced_failures", ENFORCED_FAILURE, w, ahv),
        ratio(
            "app_host_version",
            "pinwatch_enforced_failures",
            f"app_host_version:pinwatch_enforced_validations:rate{w}",
            w,
        ),
        rate(
            "app_host",
            "pinwatch_interception_failures",
            f'{ENFORCED_FAILURE},cause="interception_suspected"',
            tw,
            ah,
        ),
        rate("app_host", "pinwatch_validations", "", tw, ah),
        rate("app_host", "pinwatch_backup_matches", 'pin_match="backup"', tw, ah),
        ratio("app_host", "pinwatch_backup_matches", f"app_host:pinwatch_validations:rate{tw}", tw),
        rate("app_host", "pinwatch_report_only_validations", 'enforced="false"', tw, ah),
        # Would fail once enforced: no pinned key in the served chain. Interception is left
        # out, as in `pinwatch rollout`: enforcement is meant to fail there.
        rate(
            "app_host",
            "pinwatch_report_only_would_fail",
            would_fail_promql(),
            tw,
            ah,
        ),
        ratio(
            "app_host",
            "pinwatch_report_only_would_fail",
            f"app_host:pinwatch_report_only_validations:rate{tw}",
            tw,
        ),
        # Staged enforcement: pin mismatches and validations per cohort (`enforced` kept).
        rate("app_host_enforced", "pinwatch_cohort_validations", COHORT_VALIDATION, cw, ahe),
        rate("app_host_enforced", "pinwatch_cohort_mismatches", COHORT_MISMATCH, cw, ahe),
        ratio(
            "app_host_enforced",
            "pinwatch_cohort_mismatches",
            f"app_host_enforced:pinwatch_cohort_validations:rate{cw}",
            cw,
        ),
        # Breadth: distinct counts read from ClickHouse, the same on every consumer replica,
        # so `max` across replicas (a sum would count each device once per replica).
        *(
            {
                "record": f"{level}:{metric}:max",
                "expr": f"max by ({by}) ({metric})",
            }
            for level, by, metrics in (
                (
                    "app_host_cause",
                    "app, host, cause",
                    ("pinwatch_failing_devices", "pinwatch_failing_networks"),
                ),
                (
                    "app_host",
                    "app, host",
                    (
                        "pinwatch_failing_devices_all_causes",
                        "pinwatch_failing_networks_all_causes",
                    ),
                ),
                (
                    "app_host_version",
                    "app, host, app_version",
                    (
                        "pinwatch_failing_devices_by_version",
                        "pinwatch_failing_networks_by_version",
                    ),
                ),
            )
            for metric in metrics
        ),
    ]


def pipeline_recording_rules(c: AlertConfig) -> list[dict[str, Any]]:
    w = c.page_window
    return [
        # Lag is per partition, exported by the replica that owns it; `max` per partition first
        # so a partition two replicas report for a moment (a rebalance, a replica hung with its
        # last values) is counted once.
        {
            "record": "job:pinwatch_consumer_lag:sum",
            "expr": "sum by (job) (max by (job, topic, partition) (pinwatch_consumer_lag))",
        },
        {
            "record": "job:pinwatch_ingest_reports:rate" + c.ingest_silence_window,
            "expr": "sum by (job) (rate(pinwatch_ingest_reports_total"
            f"[{c.ingest_silence_window}]))",
        },
        {
            "record": f"job:pinwatch_ingest_requests:rate{w}",
            "expr": f"sum by (job) (rate(pinwatch_ingest_requests_total[{w}]))",
        },
        {
            "record": f"job:pinwatch_ingest_produce_errors:rate{w}",
            "expr": f"sum by (job) (rate(pinwatch_ingest_produce_errors_total[{w}]))",
        },
        {
            "record": f"job:pinwatch_ingest_produce_errors:ratio_rate{w}",
            "expr": f"job:pinwatch_ingest_produce_errors:rate{w}\n/\n"
            f"job:pinwatch_ingest_requests:rate{w}",
        },
    ]


def _alert(
    name: str,
    expr: str,
    for_: str,
    severity: str,
    component: str,
    summary: str,
    description: str,
    c: AlertConfig,
    **levers: str,
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        **({"for": for_} if for_ else {}),
        "labels": {"severity": severity, "component": component},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{c.runbook}#{_anchor(name)}",
            **levers,
        },
    }


def _breadth(level: str, metric: str, on: str, c: AlertConfig, selector: str = "") -> str:
    """`and` clauses requiring page breadth: distinct failing devices and networks."""
    return (
        f"and on ({on})\n{level}:pinwatch_failing_devices{metric}:max{selector}"
        f" >= {c.page_min_devices}\n"
        f"and on ({on})\n{level}:pinwatch_failing_networks{metric}:max{selector}"
        f" >= {c.page_min_networks}"
    )


def pinning_alerts(c: AlertConfig) -> list[dict[str, Any]]:
    w, tw, nw, cw = c.page_window, c.ticket_window, c.rotation_now_window, c.cohort_window
    at = "{{ $labels.app }} on {{ $labels.host }}"
    rotation_share = _q(
        f'app_host:pinwatch_rotation_failures:ratio_rate{nw}{{app="%s",host="%s"}}',
        "humanizePercentage",
    )
    rotation_networks = _q(
        'app_host_cause:pinwatch_failing_networks:max{app="%s",host="%s",'
        'cause="rotation_suspected"}'
    )
    failure_rate = _q(f'app_host:pinwatch_enforced_failures:rate{w}{{app="%s",host="%s"}}')
    failure_devices = _q('app_host:pinwatch_failing_devices_all_causes:max{app="%s",host="%s"}')
    failure_networks = _q('app_host:pinwatch_failing_networks_all_causes:max{app="%s",host="%s"}')
    interception_networks = _q(
        'app_host_cause:pinwatch_failing_networks:max{app="%s",host="%s",'
        'cause="interception_suspected"}'
    )
    backup_rate = _q(f'app_host:pinwatch_backup_matches:rate{tw}{{app="%s",host="%s"}}')
    would_fail_rate = _q(f'app_host:pinwatch_report_only_would_fail:rate{tw}{{app="%s",host="%s"}}')
    version_devices, version_networks = (
        _q(
            f"app_host_version:pinwatch_failing_{what}_by_version:max"
            '{app="%s",host="%s",app_version="%s"}',
            args="$labels.app $labels.host $labels.app_version",
        )
        for what in ("devices", "networks")
    )
    cohort_enforced, cohort_report_only = (
        _q(
            f"app_host_enforced:pinwatch_cohort_mismatches:ratio_rate{cw}"
            f'{{app="%s",host="%s",enforced="{enforced}"}}',
            "humanizePercentage",
        )
        for enforced in ("true", "false")
    )
    rotation = '{cause="rotation_suspected"}'
    return [
        _alert(
            "PinwatchRotationBreakage",
            f"app_host_cause:pinwatch_failing_devices:max{rotation} >= {c.page_min_devices}\n"
            "and on (app, host, cause)\n"
            f"app_host_cause:pinwatch_failing_networks:max{rotation} >= {c.page_min_networks}\n"
            "and on (app, host)\n"
            "(\n"
            f"    app_host:pinwatch_rotation_failures:ratio_rate{w} >= {c.rotation_min_share}\n"
            "  or\n"
            f"    app_host:pinwatch_rotation_failures:ratio_rate{nw}"
            f" >= {c.rotation_now_min_share}\n"
            ")",
            c.rotation_for,
            "page",
            "pinning",
            f"{at}: the server presents a key the app does not pin",
            f"{{{{ $value | humanize }}}} devices on {rotation_networks} networks failed pinning "
            f"for {at} in the last 5 minutes with a publicly trusted chain whose keys are not "
            f"in the pin set; {rotation_share} of enforced validations over the last {nw} fail "
            "this way. A certificate rotated to an unpinned key: users of the app cannot reach "
            "the host. First, stop enforcement for them: run the kill_switch command.",
            c,
            kill_switch=kill_switch("PinwatchRotationBreakage"),
        ),
        _alert(
            "PinwatchPinFailureRateHigh",
            f"app_host:pinwatch_enforced_failures:ratio_rate{w} >= {c.failure_min_share}\n"
            "and on (app, host)\n"
            f"app_host:pinwatch_enforced_failures:rate{w} >= {c.failure_min_rate}\n"
            + _breadth("app_host", "_all_causes", "app, host", c),
            c.failure_for,
            "page",
            "pinning",
            f"{at}: {{{{ $value | humanizePercentage }}}} of pin validations fail",
            f"{{{{ $value | humanizePercentage }}}} of enforced pin validations for {at} "
            f"failed over the last {w} ({failure_rate} failures/s, {failure_devices} devices on "
            f"{failure_networks} networks in the last 5 minutes), whatever the cause (normal is "
            f"well under {c.failure_min_share:.0%}). Users with enforced pinning cannot reach "
            "the host.",
            c,
            kill_switch=kill_switch("PinwatchPinFailureRateHigh"),
        ),
        _alert(
            "PinwatchAppVersionFailing",
            f"app_host_version:pinwatch_enforced_failures:ratio_rate{w} >= {c.version_min_share}\n"
            f"and app_host_version:pinwatch_enforced_failures:rate{w} >= {c.version_min_rate}\n"
            "and\n"
            "(\n"
            f"    (app_host:pinwatch_enforced_failures:rate{w}"
            f" - on (app, host) group_right app_host_version:pinwatch_enforced_failures:rate{w})\n"
            "  /\n"
            f"    (app_host:pinwatch_enforced_validations:rate{w}"
            " - on (app, host) group_right"
            f" app_host_version:pinwatch_enforced_validations:rate{w})\n"
            f") < {c.version_others_max_share}\n"
            + _breadth("app_host_version", "_by_version", "app, host, app_version", c),
            c.version_for,
            "page",
            "pinning",
            "{{ $labels.app }} {{ $labels.app_version }} fails pinning on {{ $labels.host }}",
            "{{ $value | humanizePercentage }} of enforced pin validations from "
            "{{ $labels.app }} version {{ $labels.app_version }} on {{ $labels.host }} "
            f"failed over the last {w} ("
            + version_devices
            + " devices on "
            + version_networks
            + " networks in the last 5 minutes), while the host's other versions stay under "
            f"{c.version_others_max_share:.0%}: that release most likely shipped a wrong pin "
            "set.",
            c,
        ),
        _alert(
            "PinwatchEnforcedCohortFailing",
            f"(\n    app_host_enforced:pinwatch_cohort_mismatches:ratio_rate{cw}"
            '{enforced="true"}\n'
            "  - ignoring (enforced)\n"
            f"    app_host_enforced:pinwatch_cohort_mismatches:ratio_rate{cw}"
            '{enforced="false"}\n'
            f") > {c.cohort_margin}\n"
            "and on (app, host)\n"
            f"app_host_enforced:pinwatch_cohort_mismatches:rate{cw}"
            f'{{enforced="true"}} >= {c.cohort_min_rate}\n'
            "and on (app, host)\n"
            f"app_host_enforced:pinwatch_cohort_validations:rate{cw}"
            f'{{enforced="false"}} >= {c.cohort_min_baseline_rate}\n'
            + _breadth("app_host", "_all_causes", "app, host", c),
            c.cohort_for,
            "page",
            "pinning",
            f"{at}: the enforced cohort fails pinning more than report-only devices",
            f"{cohort_enforced} of the enforced cohort's pin validations for {at} over the "
            f"last {cw} were pin mismatches, against {cohort_report_only} of report-only "
            f"devices' (interception left out): {{{{ $value | humanizePercentage }}}} more, "
            f"above the {c.cohort_margin:.0%} margin. Both cohorts meet the same servers, so "
            "enforcement itself fails connections report-only did not predict: users in the "
            "enforced cohort cannot reach the host. Roll the host back to report-only: run "
            "the rollback command.",
            c,
            rollback=rollback("PinwatchEnforcedCohortFailing"),
            kill_switch=kill_switch("PinwatchEnforcedCohortFailing"),
        ),
        _alert(
            "PinwatchInterceptionSuspected",
            'app_host_cause:pinwatch_failing_devices:max{cause="interception_suspected"}\n'
            f"  >= {c.interception_min_devices}\n"
            "and on (app, host)\n"
            'app_host_cause:pinwatch_failing_networks:max{cause="interception_suspected"}\n'
            f"  <= {c.interception_max_networks}\n"
            "and on (app, host)\n"
            f"app_host:pinwatch_interception_failures:rate{tw} > 0",
            c.interception_for,
            "ticket",
            "pinning",
            f"{at}: TLS interception seen from {interception_networks} client network(s)",
            f"{{{{ $value | humanize }}}} devices on {interception_networks} network(s) failed "
            f"pinning for {at} in the last 5 minutes with a chain that does not end in a public "
            "root: a TLS-inspecting proxy or a user-installed root, not a server problem. "
            "Pinning is doing its job; find out who intercepts.",
            c,
        ),
        _alert(
            "PinwatchBackupPinServed",
            f"app_host:pinwatch_backup_matches:ratio_rate{tw} > 0",
            c.backup_for,
            "info",
            "pinning",
            f"{at}: clients see the backup pin",
            f"{{{{ $value | humanizePercentage }}}} of pin validations for {at} over the last "
            f"{tw} matched a backup pin ({backup_rate}/s): a rotation to the backup key is "
            "under way. Mint a new offline backup key and ship it in the next release.",
            c,
        ),
        _alert(
            "PinwatchReportOnlyWouldFail",
            f"app_host:pinwatch_report_only_would_fail:ratio_rate{tw}"
            f" > {c.report_only_max_share}\n"
            "and on (app, host)\n"
            f"app_host:pinwatch_report_only_validations:rate{tw} >= {c.report_only_min_rate}",
            c.report_only_for,
            "ticket",
            "pinning",
            f"{at}: enforcing the pin set now would fail "
            "{{ $value | humanizePercentage }} of validations",
            f"{{{{ $value | humanizePercentage }}}} of report-only pin validations for {at} "
            f"over the last {tw} ({would_fail_rate}/s) saw no pinned key, interception left "
            f"out; the bar for moving to enforcement is {c.report_only_max_share:.2%}. Do not "
            "raise enforcement; see `pinwatch rollout {{ $labels.host }}`.",
            c,
        ),
    ]


def pipeline_alerts(c: AlertConfig) -> list[dict[str, Any]]:
    w = c.page_window
    jobs = f"{c.ingest_job}|{c.consumer_job}"
    # Per replica: each inserts what its own partitions carry, so one that stopped while its
    # partitions lag is stuck even when the others insert (a `max` over replicas hid it).
    stale = (
        "time() - pinwatch_consumer_last_insert_timestamp_seconds"
        f" > {c.insert_stale_seconds}\n"
        "and on (job, instance)\n"
        "sum by (job, instance) (pinwatch_consumer_lag) > 0"
    )
    return [
        _alert(
            "PinwatchIngestNotReceiving",
            f"(\n  job:pinwatch_ingest_reports:rate{c.ingest_silence_window}\n"
            # An ingest that never accepted anything has no report series at all: `up * 0`
            # stands in for it, so silence from the first minute counts too.
            f'  or sum by (job) (up{{job="{c.ingest_job}"}}) * 0\n) == 0',
            c.ingest_silence_for,
            "page",
            "pipeline",
            "pinwatch ingest accepts no reports",
            f"Ingest ({{{{ $labels.job }}}}) accepted no report in the last "
            f"{c.ingest_silence_window}. Apps report successes continuously, so silence means "
            "clients cannot reach ingest (DNS, load balancer, certificate) or every request is "
            "rejected; pinning failures are invisible meanwhile.",
            c,
        ),
        _alert(
            "PinwatchIngestProduceFailing",
            f"job:pinwatch_ingest_produce_errors:ratio_rate{w} > {c.produce_error_max_share}",
            c.produce_error_for,
            "page",
            "pipeline",
            "pinwatch ingest cannot write to Kafka",
            f"{{{{ $value | humanizePercentage }}}} of ingest requests over the last {w} were "
            "answered 503 because Kafka did not acknowledge their reports; clients retry, "
            "but reports are delayed and may be dropped on the device.",
            c,
        ),
        _alert(
            "PinwatchConsumerLagGrowing",
            f"job:pinwatch_consumer_lag:sum > {c.lag_min_records}\n"
            f"and deriv(job:pinwatch_consumer_lag:sum[{c.lag_window}]) > 0",
            c.lag_for,
            "page",
            "pipeline",
            "pinwatch consumers fall behind Kafka",
            "{{ $value | humanize }} report batches wait in Kafka and the backlog has grown for "
            f"{c.lag_for}: consumers cannot keep up, so pin metrics and alerts describe the past "
            "and time to page grows with the lag.",
            c,
        ),
        _alert(
            "PinwatchConsumerNotInserting",
            stale,
            c.insert_stale_for,
            "page",
            "pipeline",
            "pinwatch consumer {{ $labels.instance }} stopped writing to ClickHouse",
            "The last ClickHouse insert of consumer {{ $labels.instance }} was "
            "{{ $value | humanizeDuration }} ago while reports of its partitions wait in "
            "Kafka: inserts fail or the consumer is stuck. Metrics and the failing-devices "
            "gauges stop moving.",
            c,
        ),
        _alert(
            "PinwatchScrapeTargetDown",
            f'up{{job=~"{jobs}"}} == 0',
            c.target_down_for,
            "page",
            "pipeline",
            "Prometheus cannot scrape {{ $labels.job }} at {{ $labels.instance }}",
            "Prometheus failed to scrape {{ $labels.job }} at {{ $labels.instance }} for "
            f"{c.target_down_for}: the process is down or unreachable, and alerts that depend "
            "on its metrics are blind.",
            c,
        ),
        _alert(
            "PinwatchCrashLooping",
            f'changes(process_start_time_seconds{{job=~"{jobs}"}}[{c.crash_loop_window}])'
            f" >= {c.crash_loop_restarts}",
            "",
            "page",
            "pipeline",
            "{{ $labels.job }} at {{ $labels.instance }} keeps restarting",
            "{{ $labels.job }} at {{ $labels.instance }} restarted {{ $value }} times in the "
            f"last {c.crash_loop_window}: it crashes and is started again. Between restarts "
            "reports wait in Kafka (consumer) or are refused (ingest), and the alerts that "
            "read its metrics see gaps. Its log says why it exits.",
            c,
        ),
        _alert(
            "PinwatchScrapeTargetAbsent",
            f'absent(up{{job="{c.consumer_job}"}})\nor\nabsent(up{{job="{c.ingest_job}"}})',
            c.target_down_for,
            "page",
            "pipeline",
            "Prometheus has no {{ $labels.job }} target",
            "Prometheus has no scrape target for job {{ $labels.job }}: service discovery or "
            "the Prometheus configuration lost it, so no pinwatch alert can fire.",
            c,
        ),
    ]


def _list(expr: str, item: str) -> str:
    """A template fragment listing `item` (e.g. `{{ .Labels.address }}`) for every series of
    `expr`, which has `%[1]s` wherever this alert's host goes."""
    return f"{{{{ range printf `{expr}` $labels.host | query }}}} {item}{{{{ end }}}}"


def _probe_unpinned(c: AlertConfig, phase: str) -> str:
    """Per app and host in `phase`: how many edge addresses served no key of the host's pin set
    in the last probe_window. Prober replicas are merged per address (max); the app label comes
    from pinwatch_policy_host_info, as client-side alerts carry it."""
    return (
        "count by (host) (\n"
        "  max by (host, address) (\n"
        "    max_over_time(pinwatch_probe_pin_match"
        f'{{pin_set="policy",pin_match="none"}}[{c.probe_window}])\n'
        "  ) == 1\n"
        ")\n"
        "* on (host) group_right ()\n"
        f'max by (app, host) (pinwatch_policy_host_info{{phase="{phase}"}})'
    )


def prober_alerts(c: AlertConfig) -> list[dict[str, Any]]:
    """From `pinwatch probe`: an edge serving a key the host's pin set lacks (before clients
    report), and the prober's own blind spots. Component `prober`: the pipeline being down
    does not make these wrong, so the pipeline page does not inhibit them."""
    at = "{{ $labels.app }} on {{ $labels.host }}"
    edges = _list(
        'max by (address, pin) (pinwatch_probe_served_leaf_info{host="%[1]s"})\n'
        "and on (address)\n"
        "max by (address) (pinwatch_probe_pin_match"
        '{host="%[1]s",pin_set="policy",pin_match="none"}) == 1',
        "{{ .Labels.address }} (leaf key {{ .Labels.pin }})",
    )
    return [
        _alert(
            "PinwatchProbeUnpinnedKey",
            _probe_unpinned(c, "enforce"),
            c.probe_unpinned_for,
            "page",
            "prober",
            f"{at}: an edge serves a key the app does not pin",
            f"{{{{ $value }}}} edge address(es) of {{{{ $labels.host }}}} served a chain with no "
            f"key of its pin set in the last {c.probe_window}; serving it now:{edges}. "
            "{{ $labels.app }} enforces pinning for this host: its users routed to those edges "
            "fail now, before any of them can report it. Compare `pinwatch pins "
            "{{ $labels.host }}` with the pin set.",
            c,
        ),
        _alert(
            "PinwatchProbeUnpinnedKeyReportOnly",
            _probe_unpinned(c, "report_only"),
            c.probe_unpinned_for,
            "ticket",
            "prober",
            f"{at} (report-only): an edge serves a key the pin set lacks",
            f"{{{{ $value }}}} edge address(es) of {{{{ $labels.host }}}} served a chain with no "
            f"key of its pin set in the last {c.probe_window}; serving it now:{edges}. "
            "{{ $labels.app }} only reports on this host, so nobody fails, but enforcing this "
            "pin set now would lock those users out.",
            c,
        ),
        _alert(
            "PinwatchProbeEdgeFailing",
            "(max by (host, address) (pinwatch_probe_success) == 0)\n"
            "* on (host) group_left (app)\n"
            "max by (app, host) (pinwatch_policy_host_info)",
            c.probe_edge_failing_for,
            "ticket",
            "prober",
            f"{at}: the prober cannot handshake with {{{{ $labels.address }}}}",
            f"Every TLS handshake with {{{{ $labels.address }}}} for {at} failed for "
            f"{c.probe_edge_failing_for} (reasons in pinwatch_probe_errors_total): the edge is "
            "down or filtered from the prober, and which key it serves is unknown. Not a pin "
            "failure; clients' network errors tell whether users are affected.",
            c,
        ),
        _alert(
            "PinwatchProbeDown",
            f'up{{job="{c.probe_job}"}} == 0',
            c.probe_down_for,
            "ticket",
            "pipeline",
            "The pinwatch prober at {{ $labels.instance }} cannot be scraped",
            f"Prometheus failed to scrape {{{{ $labels.instance }}}} ({c.probe_job}) for "
            f"{c.probe_down_for}: edges serving an unpinned key are noticed only once clients "
            "fail and report.",
            c,
        ),
    ]


def ct_alerts(c: AlertConfig) -> list[dict[str, Any]]:
    """From `pinwatch ct watch`: certificates issued for policy hosts on keys nothing pins,
    days before they are deployed, and logs it cannot read. A certificate is issued for a host,
    whichever apps pin it, so these carry no app label."""
    return [
        _alert(
            "PinwatchCertificateUnpinnedKey",
            "max by (host, log, index, not_before, pin) "
            "(pinwatch_ct_unpinned_certificate_info) == 1",
            "0s",
            "ticket",
            "ct",
            "A certificate for {{ $labels.host }} was issued with a key no shipped app version "
            "pins",
            "Certificate Transparency log {{ $labels.log }} holds, at index {{ $labels.index }}, "
            "a certificate for {{ $labels.host }} valid from {{ $labels.not_before }} whose "
            "chain has no pinned key (leaf key {{ $labels.pin }}). Deployed as it is, it breaks "
            "every app that enforces pinning for the host: add its key to the pin set and ship "
            "it first, or keep it off the servers.",
            c,
        ),
        _alert(
            "PinwatchCtLogFailing",
            "max by (log) (pinwatch_ct_poll_success) == 0",
            c.ct_log_failing_for,
            "ticket",
            "ct",
            "pinwatch cannot read the CT log {{ $labels.log }}",
            f"Every poll of {{{{ $labels.log }}}} failed for {c.ct_log_failing_for} (reasons in "
            "pinwatch_ct_errors_total: unreachable, a bad tree head signature, entries that do "
            "not match the signed tree): certificates logged there are not checked meanwhile.",
            c,
        ),
    ]


WATCHDOG = "PinwatchWatchdog"
# Prometheus labels a rule group "file;group"; pinwatch's group names start with pinwatch. Only
# they count: another team's broken rule is theirs to fix.
PINWATCH_RULE_GROUPS = 'rule_group=~".+;pinwatch.*"'


def monitoring_alerts(c: AlertConfig) -> list[dict[str, Any]]:
    """Prometheus and Alertmanager watching themselves: the Watchdog heartbeat, and alerts on
    what keeps every other alert from arriving. Metric names as Prometheus 2.42 and
    Alertmanager 0.25 expose them (tests/integration/alerts/test_meta.py reads both)."""
    prom, am = f'job="{c.prometheus_job}"', f'job="{c.alertmanager_job}"'
    ours = PINWATCH_RULE_GROUPS
    return [
        _alert(
            WATCHDOG,
            "vector(1)",
            "",
            "info",
            "monitoring",
            "pinwatch alerting is alive (dead man's switch)",
            "Always firing. Alertmanager sends it to the heartbeat receiver every minute or "
            "two; the heartbeat service alarms when it stops arriving: Prometheus, Alertmanager "
            "or the path between them is down, and no other alert could reach anyone.",
            c,
        ),
        _alert(
            "PinwatchRuleEvaluationsFailing",
            "sum by (job, instance, rule_group) (\n"
            f"  increase(prometheus_rule_evaluation_failures_total{{{prom},{ours}}}"
            f"[{c.rule_failures_window}])\n"
            ") > 0",
            c.rule_failures_for,
            "page",
            "monitoring",
            "Prometheus {{ $labels.instance }} fails to evaluate pinwatch rules",
            "{{ $value | humanize }} evaluations of rule group {{ $labels.rule_group }} failed "
            f"in the last {c.rule_failures_window}, and failures have kept coming for "
            f"{c.rule_failures_for}: the alerts of that group cannot fire. Prometheus' log and "
            "its /rules page name the rule and the error.",
            c,
        ),
        _alert(
            "PinwatchPrometheusNotificationsFailing",
            # Sends that failed (per Alertmanager) or alerts dropped (no Alertmanager took
            # them): either way alerts may never be notified. One alert per Prometheus.
            "sum by (job, instance) (\n"
            f"  increase(prometheus_notifications_errors_total{{{prom}}}"
            f"[{c.prometheus_notify_window}])\n"
            ") > 0\n"
            "or\n"
            "(\n"
            "    sum by (job, instance) (\n"
            f"      increase(prometheus_notifications_dropped_total{{{prom}}}"
            f"[{c.prometheus_notify_window}])\n"
            "    ) > 0\n"
            # The alerts of the evaluations before Prometheus found its Alertmanager are
            # dropped at every start: only drops after the first window count.
            "  and on (job, instance)\n"
            f"    time() - max by (job, instance) (process_start_time_seconds{{{prom}}})"
            f" > {_seconds(c.prometheus_notify_window):g}\n"
            ")",
            c.prometheus_notify_for,
            "page",
            "monitoring",
            "Prometheus {{ $labels.instance }} cannot send alerts to Alertmanager",
            "{{ $value | humanize }} sends of alerts from Prometheus {{ $labels.instance }} to "
            f"Alertmanager failed (or alerts were dropped) in the last "
            f"{c.prometheus_notify_window}, and failures have kept coming for "
            f"{c.prometheus_notify_for}: firing alerts may never be notified. Alertmanager is "
            "down, unreachable or refuses them; Prometheus' log names it.",
            c,
        ),
        _alert(
            "PinwatchAlertmanagerNotificationsFailing",
            "sum by (job, instance, integration) (\n"
            f"  increase(alertmanager_notifications_failed_total{{{am}}}"
            f"[{c.alertmanager_notify_window}])\n"
            ") > 0",
            c.alertmanager_notify_for,
            "page",
            "monitoring",
            "Alertmanager {{ $labels.instance }} fails to deliver {{ $labels.integration }} "
            "notifications",
            "{{ $value | humanize }} notifications through {{ $labels.integration }} failed "
            f"in the last {c.alertmanager_notify_window}, retries included, and failures have "
            f"kept coming for {c.alertmanager_notify_for}: pages, tickets or the heartbeat sent "
            "that way are lost. Alertmanager's log names the receiver and the error (a revoked "
            "key, an unreachable webhook).",
            c,
        ),
        _alert(
            "PinwatchAlertmanagerNotConnected",
            f"max by (job, instance) (prometheus_notifications_alertmanagers_discovered{{{prom}}})"
            " < 1",
            c.alertmanager_discovery_for,
            "page",
            "monitoring",
            "Prometheus {{ $labels.instance }} knows no Alertmanager",
            "Prometheus {{ $labels.instance }} has had no Alertmanager to send alerts to for "
            f"{c.alertmanager_discovery_for}: its `alerting` configuration or Alertmanager "
            "discovery is broken, so no alert leaves it (this one neither: the stopped "
            "heartbeat is what tells).",
            c,
        ),
        _alert(
            "PinwatchMonitoringTargetAbsent",
            f"absent(up{{{prom}}})\nor\nabsent(up{{{am}}})",
            c.target_down_for,
            "ticket",
            "monitoring",
            "Prometheus does not scrape {{ $labels.job }}",
            "Prometheus has no scrape target for job {{ $labels.job }}: the alerts on failed "
            "rule evaluations and failed notifications cannot see it. Add the job "
            "(alerts/config.py names it) to the Prometheus configuration.",
            c,
        ),
    ]


def rules(c: AlertConfig = CONFIG) -> dict[str, Any]:
    return {
        "groups": [
            # Recording rules share a group with the alerts that read them: a group evaluates
            # its rules in order at one timestamp, so an alert sees this evaluation's numbers,
            # not the previous interval's (which would add up to one evaluation interval to
            # time to page).
            {
                "name": "pinwatch.pinning",
                "rules": pinning_recording_rules(c) + pinning_alerts(c),
            },
            {
                "name": "pinwatch.pipeline",
                "rules": pipeline_recording_rules(c) + pipeline_alerts(c),
            },
            {"name": "pinwatch.probe", "rules": prober_alerts(c)},
            {"name": "pinwatch.ct", "rules": ct_alerts(c)},
            {"name": "pinwatch.monitoring", "rules": monitoring_alerts(c)},
        ]
    }


def alert_names(c: AlertConfig = CONFIG) -> list[str]:
    return [r["alert"] for g in rules(c)["groups"] for r in g["rules"] if "alert" in r]
