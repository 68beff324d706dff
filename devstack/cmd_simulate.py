"""`pinwatch simulate SCENARIO`: play a scenario from a simulated app population against a
running ingest (from `pinwatch up`, or any ingest on loopback)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from devstack.certs import demo_pki_dir
from devstack.simulate import (
    SCENARIOS,
    Chains,
    PopulationConfig,
    RemotePolicy,
    Sender,
    Simulation,
    build_population,
    describe,
)
from devstack.simulate.sender import NotLoopback
from pinwatch.policy import PolicyError, load_policy
from pinwatch.settings import Settings

HELP = "play a traffic scenario (rotation, interception, outage...) against a local ingest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "scenarios:\n" + "\n".join(
        f"  {s.name:<19} {s.summary}\n  {'':<19} -> {s.expect}" for s in SCENARIOS.values()
    )
    parser.add_argument("scenario", choices=sorted(SCENARIOS), metavar="SCENARIO")
    add_population_arguments(parser)
    parser.add_argument(
        "--url", help="ingest base URL, loopback only (default: the settings' ingest address)"
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    parser.add_argument(
        "--change-after",
        type=float,
        default=None,
        help="seconds of steady traffic before the scenario's change (default: a third)",
    )
    parser.add_argument(
        "--max-requests", type=int, default=None, help="stop after this many HTTP requests"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument(
        "--no-remote-policy",
        action="store_true",
        help="devices ignore the signed policy document (default: they fetch, verify and obey "
        "it: phase, enforcement percentage, kill switch)",
    )


def add_population_arguments(parser: argparse.ArgumentParser) -> None:
    """Population knobs shared by `simulate` and `demo`."""
    parser.add_argument("--devices", type=int, default=200, help="simulated devices")
    parser.add_argument(
        "--networks", type=int, default=8, help="client networks (distinct loopback /24s)"
    )
    parser.add_argument(
        "--apps", default="", help="comma-separated app ids from the policy (default: all)"
    )
    parser.add_argument("--versions", default="5.1.0,5.2.0", help="app versions in use")
    parser.add_argument("--platforms", default="ios,android", help="device platforms")
    parser.add_argument(
        "--format",
        default="native",
        choices=["native", "trustkit", "nel", "mixed"],
        help="how devices report (mixed: 60%% native, 25%% TrustKit, 15%% NEL)",
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between one device's reports"
    )
    parser.add_argument(
        "--rate", type=float, default=20.0, help="HTTPS requests per device, host and interval"
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.01, help="share of requests failing below TLS"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (runs are repeatable)")
    parser.add_argument(
        "--pki", type=Path, default=None, help="certificate keys (default: settings' PKI dir)"
    )


def population_config(args: argparse.Namespace, settings: Settings) -> PopulationConfig:
    if args.devices > settings.simulate_max_devices:
        raise ValueError(f"--devices above simulate_max_devices ({settings.simulate_max_devices})")
    return PopulationConfig(
        devices=args.devices,
        networks=args.networks,
        apps=tuple(a for a in args.apps.split(",") if a),
        versions=tuple(v for v in args.versions.split(",") if v),
        platforms=tuple(p for p in args.platforms.split(",") if p),
        client_format=args.format,
        report_interval=args.interval,
        requests_per_interval=args.rate,
        network_error_rate=args.error_rate,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if not 0 < args.duration <= settings.simulate_max_seconds:
            raise ValueError(f"--duration must be in (0, {settings.simulate_max_seconds:.0f}]")
        policy = load_policy(settings.policy_file)
        population = build_population(policy, population_config(args, settings), seed=args.seed)
        url = args.url or f"http://{settings.ingest_host}:{settings.ingest_port}"
        sender = Sender(url, concurrency=args.concurrency)
    except (ValueError, PolicyError, NotLoopback) as exc:
        print(f"pinwatch simulate: {exc}", file=sys.stderr)
        return 2
    scenario = SCENARIOS[args.scenario]
    change_after = args.duration / 3 if args.change_after is None else args.change_after
    chains = Chains(args.pki or demo_pki_dir(settings))
    print(
        f"simulate {scenario.name}: {scenario.summary}\n"
        f"  {len(population.devices)} devices on {len(population.networks)} networks, "
        f"{len(population.targets)} hosts, sending to {sender.base_url} for {args.duration:.0f}s, "
        f"change at {change_after:.0f}s\n  expect: {scenario.expect}",
        flush=True,
    )

    async def main() -> Simulation:
        remote = None if args.no_remote_policy else RemotePolicy(sender.base_url, population)
        sim = Simulation(
            population,
            scenario,
            chains,
            sender,
            seed=args.seed,
            max_requests=args.max_requests or settings.simulate_max_requests,
            remote=remote,
        )
        async with sender:
            try:
                await sim.run(
                    args.duration,
                    change_after=change_after,
                    progress=lambda s: print(describe(s), flush=True),
                )
            finally:
                if remote is not None:
                    await remote.aclose()
        return sim

    tally = asyncio.run(main()).tally
    if tally.requests and not tally.statuses.get(202):
        print(
            f"pinwatch simulate: ingest at {sender.base_url} accepted nothing "
            f"(statuses {dict(tally.statuses)}); is it running (`pinwatch up`)?",
            file=sys.stderr,
        )
        return 1
    return 0
