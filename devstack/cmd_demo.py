"""`pinwatch demo`: start the whole pipeline, play steady traffic and then an unplanned
rotation, print when each stage saw it, and shut everything down.

It runs in its own data directory (`<data_dir>/demo`, wiped first) on free ports, so it never
collides with a stack from `pinwatch up`. The timeline is also written as JSON
(`<data_dir>/demo/timeline.json`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

from devstack.certs import demo_pki_dir
from devstack.cmd_simulate import add_population_arguments, population_config
from devstack.simulate import (
    SCENARIOS,
    Chains,
    Population,
    Sender,
    Simulation,
    build_population,
    describe,
)
from devstack.simulate.timeline import Timeline, TimelineWatcher
from devstack.stack import (
    Stack,
    StackError,
    StackOptions,
    add_stack_arguments,
    quiet_progress_loggers,
    terminate_on_sigterm,
)
from pinwatch.policy import PolicyError, load_policy
from pinwatch.settings import Settings

HELP = "run the pipeline locally and play a rotation incident through to a page, timed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steady",
        type=float,
        default=None,
        help="seconds of steady traffic before the rotation (default: demo_steady_seconds)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="longest wait for the page after the rotation (default: demo_timeout_seconds)",
    )
    add_stack_arguments(parser, scrape_interval=2.0)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the demo keeps its state (default: <data_dir>/demo; wiped first)",
    )
    add_population_arguments(parser)
    parser.set_defaults(devices=100)


def run(args: argparse.Namespace, settings: Settings) -> int:
    steady = settings.demo_steady_seconds if args.steady is None else args.steady
    timeout = settings.demo_timeout_seconds if args.timeout is None else args.timeout
    try:
        policy = load_policy(settings.policy_file)
        population = build_population(policy, population_config(args, settings), seed=args.seed)
    except (ValueError, PolicyError) as exc:
        print(f"pinwatch demo: {exc}", file=sys.stderr)
        return 2
    say = _say
    quiet_progress_loggers()
    data_dir = args.data_dir or settings.data_dir / "demo"
    stack = Stack(
        settings,
        StackOptions(
            data_dir=data_dir,
            fresh=True,
            free_ports=True,
            kafka_bootstrap=args.kafka_bootstrap,
            scrape_interval=args.scrape_interval,
            evaluation_interval=args.scrape_interval,
            local_pages_only=True,
        ),
        say=say,
    )
    say(f"pinwatch demo: 1/4 starting the local pipeline (state in {stack.config.data_dir})")
    timeline: Timeline | None = None
    with terminate_on_sigterm():
        try:
            stack.start()
            timeline = asyncio.run(
                _play(stack, population, args, steady=steady, wait_page=timeout, say=say)
            )
        except StackError as exc:
            say(f"pinwatch demo: {exc}")
            return 1
        except KeyboardInterrupt:
            say("\npinwatch demo: interrupted")
            return 130
        finally:
            say("pinwatch demo: 4/4 shutting down")
            stack.stop()
    say("")
    say(timeline.render())
    if timeline.page:
        say(f"\nThe page:\n  {timeline.page}")
    out = stack.config.data_dir / "timeline.json"
    out.write_text(json.dumps(timeline.as_dict(), indent=2))
    say(f"\n(timeline saved to {out})")
    if not timeline.complete:
        say(f"pinwatch demo: no page within {timeout:.0f}s of the rotation")
        return 1
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


async def _play(
    stack: Stack,
    population: Population,
    args: argparse.Namespace,
    *,
    steady: float,
    wait_page: float,
    say: Callable[[str], None],
) -> Timeline:
    scenario = SCENARIOS["unplanned_rotation"]
    chains = Chains(args.pki or demo_pki_dir(stack.config))
    assert stack.receiver is not None
    receiver = stack.receiver
    async with Sender(stack.ingest_url, concurrency=16) as sender:
        sim = Simulation(population, scenario, chains, sender, seed=args.seed)
        stop = asyncio.Event()
        say(
            f"pinwatch demo: 2/4 steady traffic for {steady:.0f}s: {len(population.devices)} "
            f"devices on {len(population.networks)} networks, {len(population.targets)} hosts"
        )
        traffic = asyncio.create_task(
            sim.run(
                steady + wait_page,
                progress=lambda s: say("  " + describe(s)),
                progress_every=10.0,
                stop=stop,
            )
        )
        try:
            await _sleep_unless_done(steady, traffic)
            sim.change()
            assert sim.changed_at is not None
            say(
                "pinwatch demo: 3/4 unplanned rotation: the API host now serves a publicly "
                "trusted key that no app pins"
            )
            timeline = Timeline(rotated_at=sim.changed_at)
            watcher = TimelineWatcher(
                timeline,
                tally=sender.tally,
                consumer_url=stack.consumer_url,
                prometheus_url=stack.prometheus_url,
                pages=lambda: [
                    (p.received_at, p.alertname, p.describe()) for p in receiver.pages()
                ],
                say=say,
            )
            watch = asyncio.create_task(watcher.run(wait_page))
            while not watch.done():
                stack.check()  # a crashed component ends the demo with its log
                await asyncio.wait({watch}, timeout=1.0)
            return watch.result()
        finally:
            stop.set()
            await asyncio.gather(traffic, return_exceptions=True)


async def _sleep_unless_done(seconds: float, task: asyncio.Task) -> None:
    await asyncio.wait({task}, timeout=seconds)
    if task.done():
        task.result()  # a traffic failure surfaces here
