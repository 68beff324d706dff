"""Run the rollout queries through the consumer's Store and assemble one answer."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from consumers.rollout import sql
from consumers.rollout.evidence import EvidenceChain, describe, load_public_roots
from consumers.rollout.request import RolloutRequest
from consumers.rollout.verdict import Group, SurprisePin, Thresholds, Verdict, decide
from consumers.store import Store
from pinwatch.logs import event
from pinwatch.settings import Settings

log = logging.getLogger("pinwatch.rollout")


@dataclass(frozen=True)
class ObservedPin:
    pin: str
    role: str  # primary | backup | none: the best role in the candidate pin set along its chain
    label: str
    reports: int
    devices: int
    networks: int
    report_share: float
    device_share: float
    first_seen: str
    last_seen: str
    would_fail: bool
    interception: bool


@dataclass(frozen=True)
class Surprise:
    pin: str
    reports: int
    devices: int
    networks: int
    first_seen: str
    last_seen: str
    evidence: list[EvidenceChain] = field(default_factory=list)


@dataclass(frozen=True)
class Slice:
    value: str
    reports: int
    devices: int
    would_fail_devices: int
    would_fail_share: float
    intercepted_devices: int
    interception_share: float


@dataclass(frozen=True)
class Cohort:
    """One side of staged enforcement: devices that enforce the host, or only report it."""

    cohort: str  # enforced | report_only
    validations: int  # decided by pins (ok or pin_mismatch)
    mismatches: int  # interception left out
    mismatch_share: float


@dataclass(frozen=True)
class RolloutAnswer:
    host: str
    since: str
    until: str
    filters: dict[str, str]
    pin_set: dict[str, Any]
    method: str  # rollup: decided by leaf pins (hourly, since rounded down to the hour);
    # raw: a candidate pin sits deeper in chains, read from the raw table
    reports: int
    devices: int
    networks: int
    would_fail: Slice
    by_app_version: list[Slice]
    by_platform: list[Slice]
    by_network: list[Slice]
    pins: list[ObservedPin]
    unobserved_candidates: list[str]
    surprise_pins: list[Surprise]
    verdict: Verdict
    thresholds: Thresholds
    query_seconds: float
    timings: dict[str, float]  # seconds per query, for "why is this slow?"
    # Staged enforcement: both cohorts, and how many points the enforced one's mismatch share
    # is above report-only's (None unless both reported); the alert's margin is in
    # alerts/config.py (cohort_margin).
    cohorts: list[Cohort] = field(default_factory=list)
    cohort_gap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def _group(row: dict[str, Any]) -> Group:
    return Group(
        value=row.get("value", ""),
        reports=int(row["reports"]),
        devices=int(row["device_count"]),
        server_failing=int(row["server_failing"]),
        intercepted=int(row["intercepted"]),
    )


def _slice(g: Group) -> Slice:
    return Slice(
        value=g.value,
        reports=g.reports,
        devices=g.devices,
        would_fail_devices=g.server_failing,
        would_fail_share=g.would_fail_share,
        intercepted_devices=g.intercepted,
        interception_share=g.interception_share,
    )


async def analyze(store: Store, req: RolloutRequest, settings: Settings) -> RolloutAnswer:
    started = time.perf_counter()
    timings: dict[str, float] = {}

    async def run(name: str, q: sql.Query) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        rows = await store.query_dicts(q.sql, q.parameters)
        timings[name] = round(time.perf_counter() - t0, 4)
        return rows

    deep_rows = await run("deep_candidates", sql.deep_candidates_query(req))
    deep = bool(deep_rows and deep_rows[0]["deep"])
    method = "raw" if deep else "rollup"
    source = sql.raw_source(chain=True) if deep else sql.hourly_source()
    if deep or req.app_version or req.platform:
        networks = sql.raw_source(chain=deep)
    else:
        networks = sql.network_hourly_source()
    pins_q = sql.pins_query(source, req, settings.rollout_max_pins)
    groups_q = sql.groups_query(source, req)
    networks_q = sql.networks_query(networks, req, settings.rollout_max_networks)
    cohorts = [_cohort(r) for r in await run("cohorts", sql.cohorts_query(req))]
    pin_rows = await run("pins", pins_q)
    group_rows = await run("groups", groups_q)
    network_rows = await run("networks", networks_q)
    total = next(
        (_group(r) for r in group_rows if r["dimension"] == ""),
        Group("", 0, 0, 0, 0),
    )
    total_networks = next((int(r["network_count"]) for r in group_rows if r["dimension"] == ""), 0)
    by_version = [_group(r) for r in group_rows if r["dimension"] == "app_version"]
    by_platform = [_group(r) for r in group_rows if r["dimension"] == "platform"]

    labels = {p.sha256: p.label for p in req.pin_set.pins}
    pins: list[ObservedPin] = []
    for r in pin_rows:
        failing, intercepted = int(r["failing_reports"]), int(r["intercepted_reports"])
        pins.append(
            ObservedPin(
                pin=r["pin"],
                role=req.pin_set.role_of(list(r["chain"])),
                label=labels.get(r["pin"], ""),
                reports=int(r["reports"]),
                devices=int(r["device_count"]),
                networks=int(r["network_count"]),
                report_share=int(r["reports"]) / total.reports if total.reports else 0.0,
                device_share=int(r["device_count"]) / total.devices if total.devices else 0.0,
                first_seen=_iso(r["seen_first"]),
                last_seen=_iso(r["seen_last"]),
                would_fail=failing > 0,
                # A key is one party's: a proxy's forged leaves all carry the proxy's key.
                interception=failing > 0 and intercepted * 2 > failing,
            )
        )
    surprises = [p for p in pins if p.would_fail and not p.interception]
    t0 = time.perf_counter()
    evidence = await _evidence(store, req, settings, [p.pin for p in surprises])
    timings["evidence"] = round(time.perf_counter() - t0, 4)
    surprise_pins = [
        Surprise(
            p.pin,
            p.reports,
            p.devices,
            p.networks,
            p.first_seen,
            p.last_seen,
            evidence.get(p.pin, []),
        )
        for p in surprises
    ]
    thresholds = Thresholds.from_settings(settings)
    verdict = decide(
        total,
        by_version,
        by_platform,
        [SurprisePin(s.pin, s.reports, s.devices, s.networks) for s in surprise_pins],
        thresholds,
    )
    seen = {p.pin for p in pins}
    elapsed = time.perf_counter() - started
    event(
        log,
        "rollout_answered",
        host=req.host,
        method=method,
        devices=total.devices,
        ready=verdict.ready,
        seconds=round(elapsed, 3),
    )
    return RolloutAnswer(
        host=req.host,
        since=_iso(req.since.replace(minute=0, second=0, microsecond=0) if not deep else req.since),
        until=_iso(req.until),
        filters=req.filters,
        pin_set={"name": req.pin_set.name, "pins": [asdict(p) for p in req.pin_set.pins]},
        method=method,
        reports=total.reports,
        devices=total.devices,
        networks=total_networks,
        would_fail=_slice(total),
        by_app_version=[_slice(g) for g in by_version],
        by_platform=[_slice(g) for g in by_platform],
        by_network=[_slice(_group({**r, "value": r["prefix"]})) for r in network_rows],
        pins=pins,
        unobserved_candidates=[h for h in req.pin_set.hashes if h not in seen],
        surprise_pins=surprise_pins,
        verdict=verdict,
        thresholds=thresholds,
        query_seconds=elapsed,
        timings=timings,
        cohorts=cohorts,
        cohort_gap=_gap(cohorts),
    )


def _cohort(row: dict[str, Any]) -> Cohort:
    validations, mismatches = int(row["validations"]), int(row["mismatches"])
    return Cohort(
        "enforced" if int(row["enforced"]) else "report_only",
        validations,
        mismatches,
        mismatches / validations if validations else 0.0,
    )


def _gap(cohorts: list[Cohort]) -> float | None:
    shares = {c.cohort: c.mismatch_share for c in cohorts if c.validations}
    if {"enforced", "report_only"} <= set(shares):
        return shares["enforced"] - shares["report_only"]
    return None


async def _evidence(
    store: Store, req: RolloutRequest, settings: Settings, pins: list[str]
) -> dict[str, list[EvidenceChain]]:
    if not pins:
        return {}
    q = sql.evidence_query(req, pins, settings.rollout_evidence_samples)
    rows = await store.query_dicts(q.sql, q.parameters)
    roots = load_public_roots(settings.public_roots_file)
    found: dict[str, list[EvidenceChain]] = {}
    for row in rows:
        found.setdefault(row["leaf_pin"], []).append(describe(row, roots))
    return found
