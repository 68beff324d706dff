"""Rollout: the platform engineer's view during the report-only phase, read from ClickHouse
through grafana-clickhouse-datasource.

Answers, per host: which pins do clients actually see (by distinct devices); what share would
fail if the pin set were enforced, per app version, platform and network prefix; are surprise
chains (pins in no pin set) being served; and sample evidence chains to look at.

SQL conventions: `${database}` is the pinwatch database; app and host filters are wrapped in the
plugin's `$__conditionalAll(condition, $var)`, which it replaces by `1=1` when "All" is
selected; `${var:singlequote}` renders a selection as `'a','b'`. `$__timeFilter(col)` and
`$__timeInterval(col)` are the plugin's backend macros.
"""

from __future__ import annotations

from dashboards.common import (
    alert_links,
    bars,
    base_dashboard,
    clickhouse_datasource_variable,
    clickhouse_label_variable,
    database_variable,
    graph,
    grid,
    prometheus_datasource_variable,
    row,
    single_stat,
    sql,
)

UID = "pinwatch-rollout"
TITLE = "pinwatch / Rollout (report-only)"

REPORTS = "${database}.reports"
ROLLUP = "${database}.rollup_minute"
EVIDENCE = "${database}.evidence"
APP_FILTER = "$__conditionalAll(app_id IN (${app:singlequote}), $app)"
HOST_FILTER = "$__conditionalAll(policy_host IN (${host:singlequote}), $host)"
# evidence rows carry the reported host, not the policy entry: match the entry or a subdomain.
EVIDENCE_HOST_FILTER = (
    "$__conditionalAll(host IN (${host:singlequote}) OR "
    "arrayExists(h -> endsWith(host, concat('.', h)), [${host:singlequote}]), $host)"
)


# A rollup row stands for its whole minute: keep the minute the range starts in, which
# $__timeFilter(minute) would drop.
MINUTES_IN_RANGE = "minute >= toStartOfMinute($__fromTime) AND minute <= $__toTime"


def _scope(time_column: str, *conditions: str) -> str:
    window = MINUTES_IN_RANGE if time_column == "minute" else f"$__timeFilter({time_column})"
    lines = [f"WHERE {window}", *conditions, APP_FILTER, HOST_FILTER]
    return "\n      AND ".join(lines)


# Report-only clients compute the pin check but never enforce it, so a failure there is a
# "would fail". The per-minute rollup answers everything that needs no per-report column, so a
# weeks-long range stays cheap; distinct devices come from its uniq sketches (uniqMerge).
WOULD_FAIL = _scope("minute", "kind = 'pin_validation'", "enforced = 0")
WOULD_FAIL_RAW = _scope("received_at", "kind = 'pin_validation'", "enforced = 0")
PINS = _scope("minute", "kind = 'pin_validation'", "leaf_pin != ''")
PINS_RAW = _scope("received_at", "kind = 'pin_validation'", "leaf_pin != ''")
WOULD_FAIL_UNITS = {"would_fail_share": "percentunit", "reports": "short", "would_fail": "short"}


def _would_fail_by(column: str, alias: str, order: str, limit: int, raw: bool = False) -> str:
    devices = "uniqIf(device, result != 'ok')" if raw else "uniqMergeIf(devices, result != 'ok')"
    return f"""
        SELECT {column} AS {alias},
               sum(count) AS reports,
               sumIf(count, result != 'ok') AS would_fail,
               would_fail / nullIf(reports, 0) AS would_fail_share,
               {devices} AS failing_devices
        FROM {REPORTS if raw else ROLLUP}
        {WOULD_FAIL_RAW if raw else WOULD_FAIL}
        GROUP BY {alias}
        ORDER BY {order} DESC
        LIMIT {limit}
    """


def variables():
    return [
        prometheus_datasource_variable(),
        clickhouse_datasource_variable(),
        database_variable(),
        clickhouse_label_variable(
            "app",
            "App",
            f"""
            SELECT DISTINCT app_id FROM ${{database}}.rollup_minute
            WHERE {MINUTES_IN_RANGE} ORDER BY app_id
            """.strip(),
            "App id as in the pin policy.",
        ),
        clickhouse_label_variable(
            "host",
            "Host",
            f"""
            SELECT DISTINCT policy_host FROM ${{database}}.rollup_minute
            WHERE {MINUTES_IN_RANGE} AND policy_host != '' AND {APP_FILTER}
            ORDER BY policy_host
            """.strip(),
            "Policy host entry (covers its subdomains when the policy says so).",
        ),
    ]


def build(runbook_url: str):
    d = base_dashboard(
        UID,
        TITLE,
        "Report-only rollout: observed pins by distinct devices, would-fail share by app "
        "version, platform and network prefix, surprise chains, sample evidence chains.",
        runbook_url,
    )
    for variable in variables():
        d = d.with_variable(variable)

    d = (
        d.with_row(row(100, "Would fail if enforced"))
        .with_panel(
            single_stat(
                1,
                "Would-fail share",
                "Among report-only pin validations (enforced = 0) in the time range: the "
                "share that did not pass (no pin matched, or the chain was invalid). This is "
                "the share of users who would lose the API if this pin set were enforced.",
                "percentunit",
                [
                    sql(
                        f"""
                        SELECT sumIf(count, result != 'ok') / nullIf(sum(count), 0)
                               AS would_fail_share
                        FROM {ROLLUP}
                        {WOULD_FAIL}
                        """
                    )
                ],
                source="clickhouse",
                thresholds=[(None, "green"), (0.001, "orange"), (0.01, "red")],
                links=alert_links(runbook_url, "PinwatchReportOnlyWouldFail"),
            )
        )
        .with_panel(
            single_stat(
                2,
                "Report-only validations",
                "Report-only pin validations in the time range (each report weighted by its "
                "count): the denominator of the would-fail share.",
                "short",
                [
                    sql(
                        f"""
                        SELECT sum(count) AS reports
                        FROM {ROLLUP}
                        {WOULD_FAIL}
                        """
                    )
                ],
                source="clickhouse",
            )
        )
        .with_panel(
            single_stat(
                3,
                "Devices that would fail",
                "Distinct devices (keyed hashes) with at least one report-only failure.",
                "short",
                [
                    sql(
                        f"""
                        SELECT uniqMergeIf(devices, result != 'ok') AS failing_devices
                        FROM {ROLLUP}
                        {WOULD_FAIL}
                        """
                    )
                ],
                source="clickhouse",
                thresholds=[(None, "green"), (1, "orange")],
            )
        )
        .with_panel(
            single_stat(
                4,
                "Surprise pins",
                "Distinct leaf pins seen that match no pin of the host's set. Each one is a "
                "chain clients would reject: a CDN edge on a new key, or interception.",
                "short",
                [
                    sql(
                        f"""
                        SELECT uniq(leaf_pin) AS surprise_pins
                        FROM {ROLLUP}
                        {PINS}
                          AND pin_match = 'none'
                        """
                    )
                ],
                source="clickhouse",
                thresholds=[(None, "green"), (1, "orange")],
            )
        )
        .with_panel(
            graph(
                5,
                "Would-fail share over time per host",
                "Report-only failure share per policy host and time bucket ($__timeInterval).",
                "percentunit",
                [
                    sql(
                        f"""
                        SELECT $__timeInterval(minute) AS time,
                               policy_host,
                               sumIf(count, result != 'ok') / sum(count) AS would_fail_share
                        FROM {ROLLUP}
                        {WOULD_FAIL}
                        GROUP BY time, policy_host
                        ORDER BY time
                        """,
                        timeseries_format=True,
                    )
                ],
                source="clickhouse",
                width=24,
            )
        )
        .with_row(row(101, "Observed pins"))
        .with_panel(
            grid(
                6,
                "Observed leaf pins per host",
                "Which leaf SPKI pins clients actually see for each host, by distinct devices, "
                "and which pin of the set they match (primary, backup, none). Before enforcing, "
                "every pin with many devices must be primary or backup.",
                "short",
                [
                    sql(
                        f"""
                        SELECT policy_host,
                               leaf_pin,
                               pin_match,
                               uniqMerge(devices) AS distinct_devices,
                               uniqMerge(client_networks) AS networks,
                               sum(count) AS reports,
                               min(minute) AS first_seen,
                               max(minute) AS last_seen
                        FROM {ROLLUP}
                        {PINS}
                        GROUP BY policy_host, leaf_pin, pin_match
                        ORDER BY policy_host, distinct_devices DESC
                        LIMIT 200
                        """
                    )
                ],
                column_units={"first_seen": "dateTimeAsIso", "last_seen": "dateTimeAsIso"},
                width=24,
            )
        )
        .with_panel(
            graph(
                7,
                "Distinct devices per observed pin",
                "Distinct devices per time bucket for each host and leaf pin (first 12 "
                "characters of the pin). A new pin appearing here is a key change on the "
                "server side.",
                "short",
                [
                    sql(
                        f"""
                        SELECT $__timeInterval(minute) AS time,
                               concat(policy_host, ' ', substring(leaf_pin, 1, 12), ' ',
                                      pin_match) AS pin,
                               uniqMerge(devices) AS distinct_devices
                        FROM {ROLLUP}
                        {PINS}
                        GROUP BY time, pin
                        ORDER BY time
                        """,
                        timeseries_format=True,
                    )
                ],
                source="clickhouse",
                width=24,
            )
        )
        .with_row(row(102, "Who would fail"))
        .with_panel(
            grid(
                8,
                "Would-fail share by app version",
                "Report-only validations, failures and failure share per app version. A "
                "version with a high share ships a wrong pin set.",
                "short",
                [sql(_would_fail_by("app_version", "app_version", "would_fail_share", 50))],
                column_units=WOULD_FAIL_UNITS,
                width=8,
            )
        )
        .with_panel(
            grid(
                9,
                "Would-fail share by platform",
                "Report-only validations, failures and failure share per platform.",
                "short",
                [sql(_would_fail_by("platform", "platform", "would_fail_share", 20))],
                column_units=WOULD_FAIL_UNITS,
                width=8,
            )
        )
        .with_panel(
            grid(
                10,
                "Would-fail by network prefix",
                "Client network prefixes (truncated IPs) with the most report-only failures. "
                "Failures concentrated on one or two prefixes are interception (a corporate "
                "proxy), not a pin set problem.",
                "short",
                [
                    sql(
                        _would_fail_by(
                            "client_network", "network_prefix", "would_fail", 25, raw=True
                        )
                    )
                ],
                column_units=WOULD_FAIL_UNITS,
                width=8,
            )
        )
        .with_panel(
            bars(
                11,
                "Would-fail share by platform (bars)",
                "The platform table as bars, for a quick comparison.",
                "percentunit",
                [
                    sql(
                        f"""
                        SELECT platform,
                               sumIf(count, result != 'ok') / nullIf(sum(count), 0)
                               AS would_fail_share
                        FROM {ROLLUP}
                        {WOULD_FAIL}
                        GROUP BY platform
                        ORDER BY would_fail_share DESC
                        LIMIT 20
                        """
                    )
                ],
                width=24,
                height=6,
            )
        )
        .with_row(row(103, "Surprise chains"))
        .with_panel(
            grid(
                12,
                "Surprise chains",
                "Leaf pins seen that are in no pin set of the host (pin_match = none), whether "
                "the chain ends in a public root, the suspected cause, and how widespread they "
                "are. Public root + many networks: a rotation or a CDN edge on a new key. "
                "Private root + few networks: interception.",
                "short",
                [
                    sql(
                        f"""
                        SELECT policy_host,
                               leaf_pin,
                               cause,
                               chain_public_root,
                               uniq(device) AS devices,
                               uniq(client_network) AS networks,
                               sum(count) AS reports,
                               min(received_at) AS first_seen,
                               max(received_at) AS last_seen
                        FROM {REPORTS}
                        {PINS_RAW}
                          AND pin_match = 'none'
                        GROUP BY policy_host, leaf_pin, cause, chain_public_root
                        ORDER BY devices DESC
                        LIMIT 100
                        """
                    )
                ],
                column_units={"first_seen": "dateTimeAsIso", "last_seen": "dateTimeAsIso"},
                width=24,
            )
        )
        .with_panel(evidence_panel())
    )
    return d


def evidence_panel():
    return grid(
        13,
        "Sample evidence chains",
        "Sampled full certificate chains as served to clients, per host, observed pin and "
        "hour (pinwatch keeps every count but only a sample of chains). Decode a chain with "
        "`openssl x509 -inform DER` after base64-decoding each certificate.",
        "none",
        [
            sql(
                f"""
                SELECT received_at, host, leaf_pin, pin_match, result, cause,
                       app_id, app_version, platform, client_network,
                       length(served_chain) AS certificates,
                       arrayStringConcat(served_chain, ' ') AS served_chain_base64_der
                FROM {EVIDENCE}
                WHERE $__timeFilter(received_at)
                  AND {APP_FILTER}
                  AND {EVIDENCE_HOST_FILTER}
                ORDER BY received_at DESC
                LIMIT 50
                """
            )
        ],
        width=24,
    )
