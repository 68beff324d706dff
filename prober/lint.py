"""`pinwatch pins lint`: what is wrong with a pin policy before it ships, each finding at the
file and line it is about (the policy's own YAML line mechanism, pinwatch.policy.line_of), exit
status 1 on any error so CI can gate on it.

Without a network: every pin a base64 SHA-256 (the policy model), at least two distinct pins
per host, primary and backup different keys, no app reporting to a host the same policy pins
(a pinned report endpoint cannot report its own breakage: TrustKit-Android issue 72). With
`--probe`, every edge of every host is asked too: the backup key must not be served (then it is
no longer a backup), the served key must be pinned, the served leaf must not expire within
`--expiry-days`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

import yaml
from cryptography import x509

from pinwatch.pins import spki_pin
from pinwatch.policy import (
    HostPolicy,
    Phase,
    Pin,
    PinMatch,
    PinRole,
    Policy,
    PolicyError,
    line_of,
    parse_policy,
)
from pinwatch.roots import PublicRoots, RootsError
from pinwatch.settings import Settings
from prober.chain import HostProbe, probe_host
from prober.describe import days_left, with_root

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    file: str
    line: int | None
    severity: str  # error or warning
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


class _Lint:
    def __init__(self, source: str, root: yaml.Node) -> None:
        self.source = source
        self.root = root
        self.findings: list[Finding] = []

    def add(self, severity: str, loc: tuple[Any, ...], message: str) -> None:
        self.findings.append(Finding(self.source, line_of(self.root, loc), severity, message))


def lint_text(text: str, source: str) -> tuple[Policy | None, list[Finding], yaml.Node | None]:
    """The offline checks. Returns the policy (None when it does not load) and findings."""
    try:
        policy = parse_policy(text, source)
    except PolicyError as exc:
        problems = exc.problems or []
        if not problems:
            return None, [Finding(source, None, ERROR, str(exc).removeprefix(f"{source}: "))], None
        findings = [
            Finding(source, p.line, ERROR, f"{p.where}: {p.message}" if p.where else p.message)
            for p in problems
        ]
        return None, findings, None
    root = yaml.compose(text)
    lint = _Lint(source, root)
    for i, host in enumerate(policy.hosts):
        _pin_set(lint, ("hosts", i, "pins"), host.host, host.pins, ERROR)
        for name, pins in host.candidate_pin_sets.items():
            where = f"{host.host} candidate set {name!r}"
            _pin_set(lint, ("hosts", i, "candidate_pin_sets", name), where, pins, WARNING)
    for j, app in enumerate(policy.document.apps):
        report_host = app.report_host
        pinned = policy.host(report_host) if report_host else None
        if pinned is not None:
            lint.add(
                ERROR,
                ("apps", j, "report_url"),
                f"{app.id} reports to {report_host}, which this policy pins (as "
                f"{pinned.host}): when pinning breaks, the reports of the breakage fail too. "
                "Report to a host outside the pin policy.",
            )
    return policy, lint.findings, root


def _pin_set(lint: _Lint, loc: tuple[Any, ...], where: str, pins: list[Pin], severity: str) -> None:
    distinct = {p.sha256 for p in pins}
    if len(distinct) < 2:
        lint.add(
            severity,
            loc,
            f"{where}: {len(distinct)} distinct pin(s); pin at least two keys (the served one "
            "and an offline backup), or a rotation locks every user out",
        )
    roles: dict[str, set[PinRole]] = {}
    for k, pin in enumerate(pins):
        seen = roles.setdefault(pin.sha256, set())
        if pin.role in seen:
            lint.add(WARNING, (*loc, k), f"{where}: pin {pin.sha256} is listed twice")
        seen.add(pin.role)
        if pin.role == PinRole.BACKUP and PinRole.PRIMARY in seen:
            lint.add(
                severity,
                (*loc, k),
                f"{where}: backup pin {pin.sha256} is the primary key: a backup must be a "
                "different key, kept offline",
            )
        elif pin.role == PinRole.PRIMARY and PinRole.BACKUP in seen:
            lint.add(
                severity,
                (*loc, k),
                f"{where}: primary pin {pin.sha256} is also listed as the backup: a backup must "
                "be a different key, kept offline",
            )


def probe_findings(
    lint: _Lint,
    policy: Policy,
    probes: list[HostProbe],
    roots: PublicRoots | None,
    expiry_days: int,
) -> None:
    """Findings from what every edge serves now."""
    for i, (host, probe) in enumerate(zip(policy.hosts, probes, strict=True)):
        if probe.error is not None:
            lint.add(ERROR, ("hosts", i, "host"), f"cannot probe {host.host}: {probe.error}")
            continue
        for edge in probe.edges:
            if edge.error is not None:
                lint.add(ERROR, ("hosts", i, "host"), f"cannot probe {host.host}: {edge.error}")
                continue
            assert edge.chain is not None
            _edge_findings(
                lint, i, host, edge.address, list(edge.chain.certificates), roots, expiry_days
            )


def _edge_findings(
    lint: _Lint,
    i: int,
    host: HostPolicy,
    address: str,
    served: list[x509.Certificate],
    roots: PublicRoots | None,
    expiry_days: int,
) -> None:
    chain, _ = with_root(served, roots)
    pins = [spki_pin(c) for c in chain]
    at = f"{host.host} at {address}"
    for k, pin in enumerate(host.pins):
        if pin.role == PinRole.BACKUP and pin.sha256 in pins:
            lint.add(
                ERROR,
                ("hosts", i, "pins", k),
                f"{at} serves the backup key {pin.label or pin.sha256}: it is no longer a "
                "backup. Mint a new offline backup key, pin it, ship the app.",
            )
    if host.match(pins) == PinMatch.NONE:
        severity = ERROR if host.phase == Phase.ENFORCE else WARNING
        lint.add(
            severity,
            ("hosts", i, "pins"),
            f"{at} serves a chain with no pinned key (leaf {pins[0]}): "
            + (
                "enforced clients fail on this edge now"
                if host.phase == Phase.ENFORCE
                else "this pin set cannot be enforced as it is"
            ),
        )
    left = days_left(served[0])
    if left < 0:
        lint.add(
            ERROR,
            ("hosts", i, "host"),
            f"{at}: the leaf certificate expired {served[0].not_valid_after_utc:%Y-%m-%d}",
        )
    elif left < expiry_days:
        lint.add(
            ERROR,
            ("hosts", i, "host"),
            f"{at}: the leaf certificate expires {served[0].not_valid_after_utc:%Y-%m-%d}, in "
            f"{left:.0f} days (< {expiry_days}): plan its rotation onto a pinned key now",
        )


async def probe_policy(
    policy: Policy, settings: Settings, overrides: dict[str, list[str]]
) -> list[HostProbe]:
    limit = asyncio.Semaphore(settings.probe_concurrency)
    return list(
        await asyncio.gather(
            *(
                probe_host(
                    h.host,
                    h.port,
                    timeout=settings.probe_timeout_seconds,
                    max_addresses=settings.probe_max_addresses_per_host,
                    overrides=overrides,
                    limit=limit,
                )
                for h in policy.hosts
            )
        )
    )


def run_lint(args: argparse.Namespace, settings: Settings, overrides: dict[str, list[str]]) -> int:
    path = settings.policy_file
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"pinwatch pins lint: cannot read pin policy {path}: {exc.strerror}", file=sys.stderr)
        return 1
    policy, findings, root = lint_text(text, str(path))
    if policy is not None and root is not None and args.probe:
        expiry = settings.lint_expiry_days if args.expiry_days is None else args.expiry_days
        try:
            roots: PublicRoots | None = PublicRoots.load(settings.public_roots_file)
        except RootsError as exc:
            print(
                f"pinwatch pins lint: {exc}; roots left out by servers are not checked",
                file=sys.stderr,
            )
            roots = None
        lint = _Lint(str(path), root)
        probe_findings(
            lint, policy, asyncio.run(probe_policy(policy, settings, overrides)), roots, expiry
        )
        findings += lint.findings
    findings.sort(key=lambda f: (f.line or 0, f.severity, f.message))
    errors = sum(f.severity == ERROR for f in findings)
    warnings = len(findings) - errors
    if args.json:
        print(json.dumps({"findings": [asdict(f) for f in findings], "errors": errors}, indent=2))
    else:
        for finding in findings:
            print(finding)
        checked = "offline and --probe" if args.probe else "offline; --probe also asks the edges"
        print(
            f"{path}: {errors} error(s), {warnings} warning(s) ({checked})",
            file=sys.stderr if errors else sys.stdout,
        )
    return 1 if errors else 0
