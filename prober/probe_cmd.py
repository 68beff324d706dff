"""`pinwatch probe`: the prober as a long-running command (also a component of `pinwatch up`),
metrics on its own /metrics port; `--once` runs one round, prints it and exits 1 when an edge
serves no pinned key or cannot be probed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pinwatch.policy import Policy, PolicyError, load_policy
from pinwatch.roots import PublicRoots, RootsError
from pinwatch.settings import Settings
from pinwatch.vocabulary import PinMatch
from prober.chain import HostProbe, parse_resolve
from prober.probe import Prober
from prober.service import serve

HELP = "handshake with every edge of every policy host on an interval; pin results as metrics"

log = logging.getLogger("pinwatch.probe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=None, help="metrics port (default: PINWATCH_PROBE_PORT, 9788)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between rounds (default: PINWATCH_PROBE_INTERVAL_SECONDS, 15)",
    )
    parser.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="HOST=ADDR[,ADDR]",
        help="use these addresses for HOST instead of DNS (repeatable)",
    )
    parser.add_argument(
        "--once", action="store_true", help="one round, print every edge's result, exit"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        overrides = parse_resolve(args.resolve)
        policy = load_policy(settings.policy_file)
    except (ValueError, PolicyError) as exc:
        print(f"pinwatch probe: {exc}", file=sys.stderr)
        return 1
    if args.interval is not None:
        if args.interval <= 0:
            print("pinwatch probe: --interval must be positive", file=sys.stderr)
            return 1
        settings = settings.model_copy(update={"probe_interval_seconds": args.interval})
    try:
        roots: PublicRoots | None = PublicRoots.load(settings.public_roots_file)
    except RootsError as exc:
        print(f"pinwatch probe: {exc}", file=sys.stderr)
        return 1
    if not policy.hosts:
        print(f"pinwatch probe: {settings.policy_file} names no host to probe", file=sys.stderr)
        return 1
    prober = Prober(policy, settings, overrides=overrides, roots=roots)
    if args.once:
        return _once(prober, policy)
    port = settings.probe_port if args.port is None else args.port
    return serve(
        "probe",
        prober.run,
        prober.metrics.registry,
        settings.probe_host,
        port,
        log,
        hosts=len(policy.hosts),
        interval=settings.probe_interval_seconds,
    )


def _once(prober: Prober, policy: Policy) -> int:
    probes: list[HostProbe] = asyncio.run(prober.round())
    bad = 0
    for host, probe in zip(policy.hosts, probes, strict=True):
        if probe.error is not None:
            print(f"{host.host}: {probe.error}")
            bad += 1
            continue
        for edge in probe.edges:
            if edge.error is not None:
                print(f"{host.host} {edge.address}: error ({edge.error.reason}): {edge.error}")
                bad += 1
                continue
            assert edge.chain is not None
            pin_match, leaf_pin = prober.last_result(host.host, edge.address)
            print(f"{host.host} {edge.address}: {pin_match} ({host.phase}), leaf {leaf_pin}")
            bad += pin_match == PinMatch.NONE
    return 1 if bad else 0
