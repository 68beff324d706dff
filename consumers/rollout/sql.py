"""The rollout queries, built as SQL text plus bound parameters (never values pasted into SQL).
Tables are written `{db}.table`; `consumers.store.Store` fills in the database.

Two sources answer the same questions. The per-minute rollup (`rollup_minute`) holds report sums
and distinct-device/network sketches per leaf pin, app version and platform: it answers the pin
distribution and the would-fail shares when "would this chain pass?" depends on the leaf pin
alone, and stays small at any report volume. The raw `reports` table answers what the rollup
cannot: the breakdown by client network prefix, and would-fail when a candidate pin sits deeper
in the chain (an intermediate or root key), which needs each report's full `observed_pins`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumers.rollout.request import RolloutRequest

INTERCEPTION = "interception_suspected"


@dataclass(frozen=True)
class Source:
    """How one table spells time, report sums and distinct counts."""

    table: str
    time: str
    count: str  # the column holding how many reports a row stands for
    devices: str  # distinct devices
    devices_if: str  # distinct devices where {cond}
    networks: str  # distinct client networks
    fail: str  # the would-fail condition of one row under the candidate pins

    @property
    def reports(self) -> str:
        return f"sum({self.count})"

    def sum_if(self, cond: str) -> str:
        return f"sumIf({self.count}, {cond})"


def rollup_source() -> Source:
    return Source(
        table="{db}.rollup_minute",
        time="minute",
        count="count",
        devices="uniqMerge(devices)",
        devices_if="uniqMergeIf(devices, {cond})",
        networks="uniqMerge(client_networks)",
        fail="(leaf_pin NOT IN {candidates:Array(String)})",
    )


def raw_source(*, chain: bool) -> Source:
    """`chain`: a report passes when ANY of its observed pins is a candidate, not only its leaf."""
    fail = (
        "(NOT hasAny(observed_pins, {candidates:Array(String)}))"
        if chain
        else "(leaf_pin NOT IN {candidates:Array(String)})"
    )
    return Source(
        table="{db}.reports",
        time="received_at",
        count="count",
        devices="uniq(device)",
        devices_if="uniqIf(device, {cond})",
        networks="uniq(client_network)",
        fail=fail,
    )


@dataclass(frozen=True)
class Query:
    sql: str
    parameters: dict[str, Any]


def _where(src: Source, req: RolloutRequest) -> tuple[str, dict[str, Any]]:
    """Pin validations of the host in the window. `chain_invalid` is left out: system trust
    already rejects those chains, so enforcing pins changes nothing for them."""
    conds = [
        "host = {host:String}",
        f"{src.time} >= {{since:DateTime64(3, 'UTC')}}",
        f"{src.time} < {{until:DateTime64(3, 'UTC')}}",
        "kind = 'pin_validation'",
        "result IN ('ok', 'pin_mismatch')",
    ]
    params: dict[str, Any] = {
        "host": req.host,
        "since": req.since.replace(tzinfo=None),
        "until": req.until.replace(tzinfo=None),
        "candidates": req.pin_set.hashes,
    }
    for column, value in (
        ("app_id", req.app),
        ("app_version", req.app_version),
        ("platform", req.platform),
    ):
        if value is not None:
            conds.append(f"{column} = {{{column}:String}}")
            params[column] = value
    return " AND ".join(conds), params


def _intercepted(src: Source) -> str:
    return f"({src.fail} AND cause = '{INTERCEPTION}')"


def _server_fail(src: Source) -> str:
    return f"({src.fail} AND cause != '{INTERCEPTION}')"


def pins_query(src: Source, req: RolloutRequest, limit: int) -> Query:
    """One row per served leaf pin: reports, devices, networks, first/last seen."""
    where, params = _where(src, req)
    chain = "any(observed_pins)" if src.table.endswith(".reports") else "[leaf_pin]"
    sql = f"""
        SELECT leaf_pin AS pin,
               {src.reports} AS reports,
               {src.devices} AS device_count,
               {src.networks} AS network_count,
               min({src.time}) AS first_seen,
               max({src.time}) AS last_seen,
               {src.sum_if(_intercepted(src))} AS intercepted_reports,
               {src.sum_if(src.fail)} AS failing_reports,
               {chain} AS chain
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
               {src.devices_if.format(cond=src.fail)} AS failing,
               {src.devices_if.format(cond=_server_fail(src))} AS server_failing,
               {src.devices_if.format(cond=_intercepted(src))} AS intercepted
        FROM {src.table}
        WHERE {where}
        GROUP BY GROUPING SETS ((), (app_version), (platform))
        ORDER BY dimension, device_count DESC, value"""
    return Query(sql, params)


def networks_query(src: Source, req: RolloutRequest, limit: int) -> Query:
    """The client network prefixes with the most would-fail devices, each with its own total.

    Raw table only (the rollup keeps networks as a sketch, not a dimension). The inner query
    picks the worst prefixes reading rows that fail; the outer one counts those prefixes whole."""
    where, params = _where(src, req)
    sql = f"""
        SELECT client_network AS prefix,
               {src.reports} AS reports,
               {src.devices} AS device_count,
               {src.devices_if.format(cond=src.fail)} AS failing,
               {src.devices_if.format(cond=_server_fail(src))} AS server_failing,
               {src.devices_if.format(cond=_intercepted(src))} AS intercepted
        FROM {src.table}
        WHERE {where} AND client_network IN (
            SELECT client_network FROM {src.table}
            WHERE {where} AND {src.fail}
            GROUP BY client_network
            ORDER BY {src.devices} DESC, client_network
            LIMIT {int(limit)})
        GROUP BY client_network
        ORDER BY failing DESC, device_count DESC, prefix"""
    return Query(sql, params)


def deep_candidates_query(req: RolloutRequest) -> Query:
    """Is any candidate pin seen below the leaf (an intermediate or root key) in the sampled
    evidence chains? If so "does this chain pass" depends on more than the leaf, and the
    would-fail numbers must come from the raw table's full `observed_pins`."""
    sql = """
        SELECT count() FROM {db}.evidence
        WHERE host = {host:String} AND hour >= toStartOfHour({since:DateTime64(3, 'UTC')})
          AND hasAny(arrayPopFront(observed_pins), {candidates:Array(String)})"""
    return Query(
        sql,
        {
            "host": req.host,
            "since": req.since.replace(tzinfo=None),
            "candidates": req.pin_set.hashes,
        },
    )


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
    return Query(sql, {"host": req.host, "pins": pins, "since": req.since.replace(tzinfo=None)})
