"""`pinwatch pins`: the SPKI SHA-256 pin of every certificate a host serves (or a PEM/DER file
holds), leaf to root, and each pin's role in the host's pin policy. `pinwatch pins lint` is the
policy lint (prober/lint.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from pinwatch.policy import HostPolicy, Policy, PolicyError, load_policy
from pinwatch.roots import PublicRoots, RootsError
from pinwatch.settings import Settings
from prober.chain import (
    ServedChain,
    parse_resolve,
    parse_target,
    probe_host,
    read_certificates,
)
from prober.describe import PinLine, describe, policy_host_for, with_root

HELP = "SPKI pins of a host's served chain (or a PEM/DER file) with their policy roles; `lint`"

USAGE = """
  pinwatch pins HOST[:PORT] [--servername NAME] [--resolve HOST=ADDR[,ADDR]] [--json]
  pinwatch pins --pem FILE | --der FILE [--servername NAME] [--json]
  pinwatch pins lint [--probe] [--expiry-days N] [--json]"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = USAGE
    parser.add_argument(
        "target",
        nargs="?",
        metavar="HOST[:PORT] | lint",
        help="host to handshake with (port: the policy's for the host, else 443), or `lint`",
    )
    chain = parser.add_argument_group("pins of a chain")
    chain.add_argument(
        "--servername",
        metavar="NAME",
        help="SNI name to send, and the policy host the roles are read from (default: HOST; "
        "with --pem/--der: the leaf's names)",
    )
    chain.add_argument("--pem", type=Path, metavar="FILE", help="read the chain from a PEM file")
    chain.add_argument("--der", type=Path, metavar="FILE", help="read one DER certificate")
    parser.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="HOST=ADDR[,ADDR]",
        help="use these addresses for HOST instead of DNS (repeatable; adds to "
        "PINWATCH_PROBE_RESOLVE)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    lint = parser.add_argument_group("pins lint")
    lint.add_argument(
        "--probe",
        action="store_true",
        help="also handshake with every policy host: backup key not served, served key "
        "pinned, leaf not about to expire",
    )
    lint.add_argument(
        "--expiry-days",
        type=int,
        default=None,
        metavar="N",
        help="with --probe: a served leaf expiring within N days is an error "
        "(default: PINWATCH_LINT_EXPIRY_DAYS)",
    )


def fail(message: str) -> int:
    print(f"pinwatch pins: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        overrides = {**settings.probe_resolve, **parse_resolve(args.resolve)}
    except ValueError as exc:
        return fail(str(exc))
    if args.target == "lint":
        if args.pem or args.der or args.servername:
            return fail("`pins lint` takes no --pem, --der or --servername")
        from prober.lint import run_lint

        return run_lint(args, settings, overrides)
    if args.probe or args.expiry_days is not None:
        return fail("--probe and --expiry-days belong to `pinwatch pins lint`")
    sources = [s for s in (args.target, args.pem, args.der) if s]
    if len(sources) != 1:
        return fail("give exactly one of HOST[:PORT], --pem FILE or --der FILE (see --help)")
    policy, note = policy_for_roles(
        settings, explicit=args.policy is not None or "PINWATCH_POLICY_FILE" in os.environ
    )
    if policy is None and note.startswith("error:"):
        return fail(note.removeprefix("error: "))
    roots = _roots(settings)
    if args.target:
        return _from_host(args, settings, policy, roots, overrides, note)
    form, path = ("pem", args.pem) if args.pem else ("der", args.der)
    try:
        certs = read_certificates(path, form)
    except ValueError as exc:
        return fail(str(exc))
    host = policy_host_for(policy, args.servername, certs)
    full, added = with_root(certs, roots)
    lines = describe(full, host, served=len(certs))
    if args.json:
        print(json.dumps(_json_chain(str(path), host, lines), indent=2))
    else:
        print(_text_heading(str(path), host, note))
        print(render(lines, host))
    return 0


def policy_for_roles(settings: Settings, *, explicit: bool) -> tuple[Policy | None, str]:
    """The policy the roles come from. A policy the user named must load; the default one
    missing only means no roles (a note says so)."""
    try:
        return load_policy(settings.policy_file), ""
    except PolicyError as exc:
        if explicit or settings.policy_file.exists():
            return None, f"error: {exc}"
        return None, f"(no pin policy at {settings.policy_file}: roles not shown; use --policy)"


def _roots(settings: Settings) -> PublicRoots | None:
    try:
        return PublicRoots.load(settings.public_roots_file)
    except RootsError as exc:
        print(f"pinwatch pins: {exc}; roots the server leaves out are not shown", file=sys.stderr)
        return None


def _from_host(
    args: argparse.Namespace,
    settings: Settings,
    policy: Policy | None,
    roots: PublicRoots | None,
    overrides: dict[str, list[str]],
    note: str,
) -> int:
    try:
        hostname, port = parse_target(args.target)
    except ValueError as exc:
        return fail(str(exc))
    servername = args.servername or hostname
    host = policy.host(servername) if policy is not None else None
    port = port or (host.port if host is not None else 443)
    probe = asyncio.run(
        probe_host(
            hostname,
            port,
            servername=servername,
            timeout=settings.probe_timeout_seconds,
            max_addresses=settings.probe_max_addresses_per_host,
            overrides=overrides,
        )
    )
    results = [e.chain for e in probe.edges if e.chain is not None]
    errors = [e.error for e in probe.edges if e.error is not None]
    errors += [probe.error] if probe.error is not None else []
    out: list[dict[str, Any]] = []
    for chains in _group(results):
        served = list(chains[0].certificates)
        full, _ = with_root(served, roots)
        lines = describe(full, host, served=len(served))
        where = f"{hostname}:{port} at {', '.join(c.address for c in chains)} (SNI {servername})"
        if args.json:
            addresses = [c.address for c in chains]
            out.append({**_json_chain(where, host, lines), "addresses": addresses})
        else:
            print(_text_heading(where, host, note))
            print(render(lines, host))
            if not chains[0].complete:
                print("  (this Python gives the leaf only: upgrade to 3.10+ for the whole chain)")
    for error in errors:
        if args.json:
            out.append({"error": str(error), "reason": error.reason})
        print(f"pinwatch pins: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=2))
    return 1 if errors else 0


def _group(results: list[ServedChain]) -> list[list[ServedChain]]:
    """Addresses serving the same chain, together (edges usually agree)."""
    groups: dict[tuple[bytes, ...], list[ServedChain]] = {}
    for result in results:
        key = tuple(c.fingerprint(hashes.SHA256()) for c in result.certificates)
        groups.setdefault(key, []).append(result)
    return list(groups.values())


def _text_heading(where: str, host: HostPolicy | None, note: str) -> str:
    if host is not None:
        policy = f"policy host {host.host} ({host.phase})"
    else:
        policy = note or "no policy host covers this name: roles not shown"
    return f"{where}\n  {policy}"


def render(lines: list[PinLine], host: HostPolicy | None) -> str:
    rows = []
    for line in lines:
        role = line.role or "-"
        if line.label:
            role += f" ({line.label})"
        if line.candidate_sets:
            role += f" [candidate: {', '.join(line.candidate_sets)}]"
        served = "" if line.served else "  (not served: root from the trust store)"
        rows.append(
            f"  {line.index}  {line.position:<12}  {line.pin}  {role:<24}  "
            f"{line.subject} (until {line.not_after}){served}"
        )
    if host is not None:
        rows.append(f"  pin match: {host.match([line.pin for line in lines])}")
    return "\n".join(rows)


def _json_chain(where: str, host: HostPolicy | None, lines: list[PinLine]) -> dict[str, Any]:
    return {
        "source": where,
        "policy_host": host.host if host is not None else None,
        "phase": str(host.phase) if host is not None else None,
        "pin_match": str(host.match([line.pin for line in lines])) if host is not None else None,
        "chain": [line.as_dict() for line in lines],
    }
