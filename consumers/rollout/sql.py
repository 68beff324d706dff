"""The rollout queries, built as SQL text plus bound parameters (never values pasted into SQL).
Tables are written `{db}.table`; `consumers.store.Store` fills in the database.

Where they read (see consumers/migrations/m0002_rollout_hourly.py for the tables):
- `rollout_hourly` answers the pin distribution and the would-fail shares overall, by app
  version and by platform whenever "would this chain pass?" depends on the leaf pin alone.
- `rollout_network_hourly` answers the breakdown by client network prefix the same way (unless
  the question filters by app version or platform, which that table does not keep).
- the raw `reports` table answers the rest: a candidate pin that sits deeper in the chain (an
  intermediate or root key) needs each report's full `observed_pins`.
- `rollup_minute` answers the staged-enforcement comparison (it keeps `enforced`), with sums
  only: no device sketches, which cost as much as the raw table at minute grain.
Hourly tables start the window at the hour `since` falls in; the answer says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumers.rollout.request import RolloutRequest
from pinwatch.vocabulary import (
    COHORT_MISMATCH_SQL,
    DECIDED_BY_PINS_SQL,
    intercepted_sql,
    would_fail_sql,
)

_LEAF_FAILS = "(leaf_pin NOT IN {candidates:Array(String)})"
_CHAIN_FAILS = "(NOT hasAny(observed_pins, {candidates:Array(String)}))"


@dataclass(frozen=True)
class Source:
    """How one table spells time, report sums and distinct counts."""

    table: str
    time: str  # the column the window applies to
    hourly: bool  # rows are hours: the window starts at the hour `since` falls in
    devices: str  # distinct devices
    devices_if: str  # distinct devices where {cond}
    networks: str  # distinct client networks
    first_seen: str
    last_seen: str
    chain: str  # a sample of the observed chain's pins
    fail: str  # the would-fail condition of one row under the candidate pins
    raw: bool = False  # needs `kind` filtered (the rollups hold pin validations only)

    @property
    def reports(self) -> str:
        return "sum(count)"

    def sum_if(self, cond: str) -> str:
        return f"sumIf(count, {cond})"


def _hourly(table: str, **columns: str) -> Source:
    return Source(
        table=table,
        time="hour",
        hourly=True,
        devices="uniqCombinedMerge(12)(devices)",
        devices_if="uniqCombinedMergeIf(12)(devices, {cond})",
        fail=_LEAF_FAILS,
        **columns,
    )


def hourly_source() -> Source:
    return _hourly(
        "{db}.rollout_hourly",
        networks="uniqCombinedMerge(12)(client_networks)",
        first_seen="min(first_seen)",
        last_seen="max(last_seen)",
        chain="any(observed_pins)",
    )


def network_hourly_source() -> Source:
    """Networks are this table's rows, so it keeps no network sketch and no sample chain."""
    return _hourly(
        "{db}.rollout_network_hourly",
        networks="1",
        first_seen="min(hour)",
        last_seen="max(hour)",
        chain="[leaf_pin]",
    )


def raw_source(*, chain: bool) -> Source:
    """`chain`: a report passes when ANY of its observed pins is a candidate, not only its leaf."""
    return Source(
        table="{db}.reports",
        time="received_at",
        hourly=False,
        devices="uniq(device)",
        devices_if="uniqIf(device, {cond})",
        networks="uniq(client_network)",
        first_seen="min(received_at)",
        last_seen="max(received_at)",
        chain="any(observed_pins)",
        fail=_CHAIN_FAILS if chain else _LEAF_FAILS,
        raw=True,
    )


@dataclass(frozen=True)
class Query:
    sql: str
    parameters: dict[str, Any]


def _where(src: Source, req: RolloutRequest) -> tuple[str, dict[str, Any]]:
    """Pin validations of the host in the window. `chain_invalid` is left out: system trust
    already rejects those chains, so enforcing pins changes nothing for them. So are reports
    that carry no pins (NEL): they say nothing about which key was served, and an empty leaf
    pin would otherwise count as one no candidate set contains."""
    since = "{since:DateTime64(3, 'UTC')}"
    conds = [
        "host = {host:String}",
        f"{src.time} >= {f'toStartOfHour({since})' if src.hourly else since}",
        f"{src.time} <= {{until:DateTime64(3, 'UTC')}}",
        "result IN ('ok', 'pin_mismatch')",
        "leaf_pin != ''",
    ]
    if src.raw:
        conds.append("kind = 'pin_validation'")
    params: dict[str, Any] = {"candidates": req.pin_set.hashes, **_scope(req, conds)}
    return " AND ".join(conds), params


def _scope(req: RolloutRequest, conds: list[str]) -> dict[str, Any]:
    """The host, window and filter parameters of a request; the filters' conditions are
    appended to `conds`."""
    params: dict[str, Any] = {
        "host": req.host,
        "since": req.since.replace(tzinfo=None),
        "until": req.until.replace(tzinfo=None),
    }
    for column, value in (
        ("app_id", req.app),
        ("app_version", req.app_version),
        ("platform", req.platform),
    ):
        if value is not None:
            conds.append(f"{column} = {{{column}:String}}")
            params[column] = value
    return params


def _intercepted(src: Source) -> str:
    return f"({intercepted_sql(src.fail)})"


def _server_fail(src: Source) -> str:
    return f"({would_fail_sql(src.fail)})"


def pins_query(src: Source, req: RolloutRequest, limit: int) -> Query:
    """One row per served leaf pin: reports, devices, networks, first/last seen."""
    where, params = _where(src, req)
    sql = f"""
        SELECT leaf_pin AS pin,
               {src.reports} AS reports,
               {src.devices} AS device_count,
               {src.networks} AS network_count,
               {src.first_seen} AS seen_first,
               {src.last_seen} AS seen_last,
               {src.sum_if(_intercepted(src))} AS intercepted_reports,
               {src.sum_if(src.fail)} AS failing_reports,
               {src.chain} AS chain
        FROM {src.table}
        WHERE {where}
        GROUP BY leaf_pin
        ORDER BY device_count DESC, reports DESC, pin
        LIMIT {int(limit)}"""
    return Query(sql, params)


def groups_query(src: Source, req: RolloutRequest) -> Query:
    """Devices and would-fail devices overall, per app version and per platform, in one pass."""
    where, params = _where(src, req)
    sql = f"""
        SELECT multiIf(grouping(app_version) = 0, 'app_version',
                       grouping(platform) = 0, 'platform', '') AS dimension,
               multiIf(grouping(app_version) = 0, app_version,
                       grouping(platform) = 0, platform, '') AS value,
               {src.reports} AS reports,
               {src.devices} AS device_count,
               {src.networks} AS network_count,
               {src.devices_if.format(cond=_server_fail(src))} AS server_failing,
               {src.devices_if.format(cond=_intercepted(src))} AS intercepted
        FROM {src.table}
        WHERE {where}
        GROUP BY GROUPING SETS ((), (app_version), (platform))
        ORDER BY dimension, device_count DESC, value"""
    return Query(sql, params)


def networks_query(src: Source, req: RolloutRequest, limit: int) -> Query:
    """The client network prefixes with the most would-fail devices, each with its own total.

    The inner query ranks prefixes by failing reports (a plain sum: sketches are merged only for
    the prefixes kept); the outer one counts those prefixes whole (on the hourly table its sort
    key finds them without a scan)."""
    where, params = _where(src, req)
    sql = f"""
        SELECT client_network AS prefix,
               {src.reports} AS reports,
               {src.devices} AS device_count,
               {src.devices_if.format(cond=_server_fail(src))} AS server_failing,
               {src.devices_if.format(cond=_intercepted(src))} AS intercepted
        FROM {src.table}
        WHERE {where} AND client_network IN (
            SELECT client_network FROM {src.table}
            WHERE {where} AND {src.fail}
            GROUP BY client_network
            ORDER BY sum(count) DESC, client_network
            LIMIT {int(limit)})
        GROUP BY client_network
        ORDER BY server_failing + intercepted DESC, device_count DESC, prefix"""
    return Query(sql, params)


def deep_candidates_query(req: RolloutRequest) -> Query:
    """Is any candidate pin seen below the leaf (an intermediate or root key) in the chains
    the hourly rollup keeps a sample of? If so "does this chain pass" depends on more than the
    leaf, and the would-fail numbers must come from the raw table's full `observed_pins`."""
    sql = """
        SELECT count() AS deep FROM {db}.rollout_hourly
        WHERE host = {host:String} AND hour >= toStartOfHour({since:DateTime64(3, 'UTC')})
          AND hasAny(arrayPopFront(observed_pins), {candidates:Array(String)})"""
    params = {
        "host": req.host,
        "since": req.since.replace(tzinfo=None),
        "candidates": req.pin_set.hashes,
    }
    return Query(sql, params)


def evidence_query(req: RolloutRequest, pins: list[str], per_pin: int) -> Query:
    """The newest sampled chains of each pin in `pins` within the window."""
    sql = f"""
        SELECT leaf_pin, received_at, app_version, platform, client_network, cause,
               observed_pins, served_chain
        FROM {{db}}.evidence
        WHERE host = {{host:String}} AND leaf_pin IN {{pins:Array(String)}}
          AND hour >= toStartOfHour({{since:DateTime64(3, 'UTC')}})
        ORDER BY leaf_pin, length(served_chain) = 0, received_at DESC
        LIMIT {int(per_pin)} BY leaf_pin"""
    params = {"host": req.host, "pins": pins, "since": req.since.replace(tzinfo=None)}
    return Query(sql, params)


def cohorts_query(req: RolloutRequest) -> Query:
    """Staged enforcement: per cohort (`enforced`), the validations the pins decided and the pin
    mismatches among them, interception left out (pinwatch/vocabulary.py)."""
    conds = [
        "host = {host:String}",
        "minute >= toStartOfMinute({since:DateTime64(3, 'UTC')})",
        "minute <= {until:DateTime64(3, 'UTC')}",
        "kind = 'pin_validation'",
        DECIDED_BY_PINS_SQL,
    ]
    params = _scope(req, conds)
    sql = f"""
        SELECT enforced,
               sum(count) AS validations,
               sumIf(count, {COHORT_MISMATCH_SQL}) AS mismatches
        FROM {{db}}.rollup_minute
        WHERE {" AND ".join(conds)}
        GROUP BY enforced
        ORDER BY enforced DESC"""
    return Query(sql, params)
