"""Rollout: the platform engineer's view during the report-only phase, read from ClickHouse
through grafana-clickhouse-datasource.

Answers, per host: which pins do clients actually see (by distinct devices); what share would
fail if the pin set were enforced, per app version, platform and network prefix; are surprise
chains (pins in no pin set) being served; and sample evidence chains to look at.

"Would fail" follows `pinwatch rollout`: among report-only clients (`enforced = 0`) and pin
validations the pins decide (`ok` or `pin_mismatch`; a `chain_invalid` chain is refused by
system trust whatever the pins), a device would fail when it was served a chain the host's pin
set does not match (`pin_match = 'none'`) and the cause is not interception; devices behind
TLS interception are counted apart, since enforcing pins is meant to refuse those. Shares are
shares of distinct devices.

SQL conventions: `${database}` is the pinwatch database; app and host filters are wrapped in the
plugin's `$__conditionalAll(condition, $var)`, which it replaces by `1=1` when "All" is
selected; `${var:singlequote}` renders a selection as `'a','b'`. `$__timeFilter(col)` and
`$__timeInterval(col)` are the plugin's backend macros.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, table
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models.dashboard import VariableModel

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
from pinwatch.vocabulary import (
    COHORT_MISMATCH_SQL,
    DECIDED_BY_PINS_SQL,
    intercepted_sql,
    would_fail_sql,
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

WOULD_FAIL_IF = would_fail_sql()
INTERCEPTED_IF = intercepted_sql()
DECIDED_BY_PINS = DECIDED_BY_PINS_SQL


def _scope(time_column: str, *conditions: str) -> str:
    window = MINUTES_IN_RANGE if time_column == "minute" else f"$__timeFilter({time_column})"
    lines = [f"WHERE {window}", *conditions, APP_FILTER, HOST_FILTER]
    return "\n      AND ".join(lines)


# The per-minute rollup answers everything that needs no per-report column (distinct devices
# from its uniq sketches); network prefixes and the chain's root need the raw reports.
REPORT_ONLY = ("kind = 'pin_validation'", "enforced = 0", DECIDED_BY_PINS)
WOULD_FAIL = _scope("minute", *REPORT_ONLY)
WOULD_FAIL_RAW = _scope("received_at", *REPORT_ONLY)
PINS = _scope("minute", "kind = 'pin_validation'", "leaf_pin != ''", DECIDED_BY_PINS)
PINS_RAW = _scope("received_at", "kind = 'pin_validation'", "leaf_pin != ''", DECIDED_BY_PINS)
SHARE_UNITS = {
    "would_fail_share": "percentunit",
    "interception_share": "percentunit",
}


def _devices(raw: bool, condition: str | None = None) -> str:
    if raw:
        return f"uniqIf(device, {condition})" if condition else "uniq(device)"
    return f"uniqMergeIf(devices, {condition})" if condition else "uniqMerge(devices)"


def _would_fail_by(column: str, alias: str, limit: int, raw: bool = False) -> str:
    return f"""
        SELECT {column} AS {alias},
               sum(count) AS reports,
               {_devices(raw)} AS device_count,
               {_devices(raw, WOULD_FAIL_IF)} AS would_fail_devices,
               would_fail_devices / nullIf(device_count, 0) AS would_fail_share,
               {_devices(raw, INTERCEPTED_IF)} AS intercepted_devices,
               intercepted_devices / nullIf(device_count, 0) AS interception_share
        FROM {REPORTS if raw else ROLLUP}
        {WOULD_FAIL_RAW if raw else WOULD_FAIL}
        GROUP BY {alias}
        ORDER BY would_fail_devices + intercepted_devices DESC, device_count DESC
        LIMIT {limit}
    """


# Staged enforcement: both cohorts of a host, decided by pins (pinwatch/vocabulary.py).
COHORTS = _scope("minute", "kind = 'pin_validation'", DECIDED_BY_PINS)
COHORT_NAME = "if(enforced = 1, 'enforced cohort', 'report-only')"


def _stat_sql(select: str) -> str:
    return f"""
        SELECT {select}
        FROM {ROLLUP}
        {WOULD_FAIL}
    """


def variables() -> list[cogbuilder.Builder[VariableModel]]:
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


def build(runbook_url: str) -> dashboard.Dashboard:
    d = base_dashboard(
        UID,
        TITLE,
        "Report-only rollout: observed pins by distinct devices, would-fail share by app "
        "version, platform and network prefix, the enforced cohort against report-only during "
        "staged enforcement, surprise chains, sample evidence chains.",
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
                "Share of report-only devices that were served a chain the host's pin set does "
                "not match (interception apart): the users who would lose the API if this pin "
                "set were enforced. `pinwatch rollout HOST` applies the same rule and a bar.",
                "percentunit",
                [
                    sql(
                        _stat_sql(
                            f"{_devices(False, WOULD_FAIL_IF)} / nullIf({_devices(False)}, 0) "
                            "AS would_fail_share"
                        )
                    )
                ],
                source="clickhouse",
                width=5,
                thresholds=[(None, "green"), (0.001, "orange"), (0.01, "red")],
                links=alert_links(runbook_url, "PinwatchReportOnlyWouldFail"),
            )
        )
        .with_panel(
            single_stat(
                2,
                "Report-only devices",
                "Distinct devices (keyed hashes) with report-only pin validations in the time "
                "range: what the would-fail share is a share of.",
                "short",
                [sql(_stat_sql(f"{_devices(False)} AS device_count"))],
                source="clickhouse",
                width=5,
            )
        )
        .with_panel(
            single_stat(
                3,
                "Devices that would fail",
                "Distinct report-only devices served a chain the pin set does not match "
                "(interception apart).",
                "short",
                [sql(_stat_sql(f"{_devices(False, WOULD_FAIL_IF)} AS would_fail_devices"))],
                source="clickhouse",
                width=5,
                thresholds=[(None, "green"), (1, "orange")],
            )
        )
        .with_panel(
            single_stat(
                14,
                "Devices behind interception",
                "Distinct report-only devices whose unmatched chain ends in a private root "
                "(a TLS-inspecting proxy): enforcement would refuse them by design.",
                "short",
                [sql(_stat_sql(f"{_devices(False, INTERCEPTED_IF)} AS intercepted_devices"))],
                source="clickhouse",
                width=5,
            )
        )
        .with_panel(
            single_stat(
                4,
                "Surprise pins",
                "Distinct leaf pins seen (any client) that match no pin of the host's set. Each "
                "one is a chain clients would reject: a CDN edge on a new key, or interception.",
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
                width=4,
                thresholds=[(None, "green"), (1, "orange")],
            )
        )
        .with_panel(
            graph(
                5,
                "Would-fail share over time per host",
                "Per policy host and time bucket ($__timeInterval): the share of report-only "
                "devices that would fail.",
                "percentunit",
                [
                    sql(
                        f"""
                        SELECT $__timeInterval(minute) AS time,
                               policy_host,
                               {_devices(False, WOULD_FAIL_IF)} / {_devices(False)}
                               AS would_fail_share
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
        .with_row(row(104, "Staged enforcement: enforced cohort vs report-only"))
        .with_panel(
            graph(
                15,
                "Pin mismatch share by cohort",
                "Per time bucket, the share of pin validations that were pin mismatches "
                "(interception apart) among devices that enforce the host and among devices "
                "that only report it. A device's cohort is a hash of its install id "
                "(`pinwatch policy set-phase HOST enforce --percent N`), so both meet the same "
                "servers: the lines should overlap. The enforced one above the other means "
                "enforcement fails connections report-only did not predict "
                "(PinwatchEnforcedCohortFailing).",
                "percentunit",
                [
                    sql(
                        f"""
                        SELECT $__timeInterval(minute) AS time,
                               {COHORT_NAME} AS cohort,
                               sumIf(count, {COHORT_MISMATCH_SQL}) / sum(count)
                               AS mismatch_share
                        FROM {ROLLUP}
                        {COHORTS}
                        GROUP BY time, cohort
                        ORDER BY time
                        """,
                        timeseries_format=True,
                    )
                ],
                source="clickhouse",
                width=14,
                links=alert_links(runbook_url, "PinwatchEnforcedCohortFailing"),
            )
        )
        .with_panel(
            grid(
                16,
                "Cohorts per host",
                "Per host and cohort: validations the pins decided, distinct devices, pin "
                "mismatches (interception apart) and their share. `pinwatch policy status` "
                "shows the percentage each host is enforced at now.",
                "short",
                [
                    sql(
                        f"""
                        SELECT policy_host,
                               {COHORT_NAME} AS cohort,
                               sum(count) AS validations,
                               uniqMerge(devices) AS device_count,
                               sumIf(count, {COHORT_MISMATCH_SQL}) AS mismatches,
                               mismatches / nullIf(validations, 0) AS mismatch_share
                        FROM {ROLLUP}
                        {COHORTS}
                        GROUP BY policy_host, cohort
                        ORDER BY policy_host, cohort
                        """
                    )
                ],
                column_units={"mismatch_share": "percentunit"},
                width=10,
            )
        )
        .with_row(row(101, "Observed pins"))
        .with_panel(
            grid(
                6,
                "Observed leaf pins per host",
                "Which leaf SPKI pins clients actually see for each host, by distinct devices "
                "and networks, and which pin of the set they match (primary, backup, none). "
                "Before enforcing, every pin with many devices must be primary or backup.",
                "short",
                [
                    sql(
                        f"""
                        SELECT policy_host,
                               leaf_pin,
                               pin_match,
                               uniqMerge(devices) AS device_count,
                               uniqMerge(client_networks) AS networks,
                               sum(count) AS reports,
                               min(minute) AS first_seen,
                               max(minute) AS last_seen
                        FROM {ROLLUP}
                        {PINS}
                        GROUP BY policy_host, leaf_pin, pin_match
                        ORDER BY policy_host, device_count DESC
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
                "characters of the pin) and its match. A new pin appearing here is a key change "
                "on the server side.",
                "short",
                [
                    sql(
                        f"""
                        SELECT $__timeInterval(minute) AS time,
                               concat(policy_host, ' ', substring(leaf_pin, 1, 12), ' ',
                                      pin_match) AS pin,
                               uniqMerge(devices) AS device_count
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
                "Report-only devices per app version, how many would fail and behind "
                "interception, and the shares. A version with a high share ships a wrong pin "
                "set or talks to a host on an unpinned key.",
                "short",
                [sql(_would_fail_by("app_version", "app_version", 50))],
                column_units=SHARE_UNITS,
                width=8,
            )
        )
        .with_panel(
            grid(
                9,
                "Would-fail share by platform",
                "Report-only devices per platform, would-fail and interception counts and shares.",
                "short",
                [sql(_would_fail_by("platform", "platform", 20))],
                column_units=SHARE_UNITS,
                width=8,
            )
        )
        .with_panel(
            grid(
                10,
                "Would-fail by network prefix",
                "Client network prefixes (truncated IPs) with the most would-fail or "
                "intercepted devices. Failures concentrated on one or two prefixes and counted "
                "as interception are a corporate proxy, not a pin set problem.",
                "short",
                [sql(_would_fail_by("client_network", "network_prefix", 25, raw=True))],
                column_units=SHARE_UNITS,
                width=8,
            )
        )
        .with_panel(
            bars(
                11,
                "Would-fail share by platform (bars)",
                "The platform table's would-fail share as bars, for a quick comparison.",
                "percentunit",
                [
                    sql(
                        f"""
                        SELECT platform,
                               {_devices(False, WOULD_FAIL_IF)} / nullIf({_devices(False)}, 0)
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
                               uniq(device) AS device_count,
                               uniq(client_network) AS networks,
                               sum(count) AS reports,
                               min(received_at) AS first_seen,
                               max(received_at) AS last_seen
                        FROM {REPORTS}
                        {PINS_RAW}
                          AND pin_match = 'none'
                        GROUP BY policy_host, leaf_pin, cause, chain_public_root
                        ORDER BY device_count DESC
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


def evidence_panel() -> table.Panel:
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
