"""`pinwatch demo`: start the whole pipeline, play steady traffic and then an unplanned
rotation, print when each stage saw it, and shut everything down. With `--kill-switch` it goes
on after the page: pulls the kill switch the page names, times the failing reports back to
baseline, fixes the server and lifts the switch (devstack/simulate/killswitch.py).

It runs in its own data directory (`<data_dir>/demo`, wiped first) on free ports, so it never
collides with a stack from `pinwatch up`. The timeline is also written as JSON
(`<data_dir>/demo/timeline.json`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from devstack.certs import demo_pki_dir
from devstack.cmd_simulate import add_population_arguments, population_config
from devstack.simulate import (
    SCENARIOS,
    Chains,
    Population,
    RemotePolicy,
    Sender,
    Simulation,
    build_population,
    describe,
)
from devstack.simulate.killswitch import KillSwitchPlay, KillTimeline
from devstack.simulate.timeline import Timeline, TimelineWatcher
from devstack.stack import (
    Page,
    Stack,
    StackError,
    StackOptions,
    add_stack_arguments,
    quiet_progress_loggers,
    terminate_on_sigterm,
)
from pinwatch.policy import PolicyError, load_policy
from pinwatch.policyclient import PolicyAdmin
from pinwatch.settings import Settings

HELP = "run the pipeline locally and play a rotation incident through to a page, timed"

T = TypeVar("T")


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
    parser.add_argument(
        "--kill-switch",
        action="store_true",
        help="after the page, pull the kill switch it names, time the failing reports back to "
        "baseline, fix the server and lift the switch (detect, kill, recover)",
    )
    add_stack_arguments(parser, scrape_interval=2.0, policy_refresh=5)
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
        if args.kill_switch and not args.apps:
            # One app: its page names one kill switch, which then stops every failure.
            args.apps = policy.app_ids[0]
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
            policy_refresh_seconds=args.policy_refresh,
        ),
        say=say,
    )
    say(f"pinwatch demo: 1/4 starting the local pipeline (state in {stack.config.data_dir})")
    timeline: Timeline | None = None
    killed: KillTimeline | None = None
    with terminate_on_sigterm():
        try:
            stack.start()
            timeline, killed = asyncio.run(
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
    saved = timeline.as_dict()
    if killed is not None:
        say("\n" + killed.render())
        saved["kill_switch"] = killed.as_dict()
    out = stack.config.data_dir / "timeline.json"
    out.write_text(json.dumps(saved, indent=2))
    say(f"\n(timeline saved to {out})")
    if not timeline.complete:
        say(f"pinwatch demo: no page within {timeout:.0f}s of the rotation")
        return 1
    if args.kill_switch and (killed is None or "enforcing" not in killed.stages):
        say("pinwatch demo: the kill switch did not play through (see above)")
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
) -> tuple[Timeline, KillTimeline | None]:
    scenario = SCENARIOS["unplanned_rotation"]
    chains = Chains(args.pki or demo_pki_dir(stack.config))
    assert stack.receiver is not None
    receiver = stack.receiver
    remote = RemotePolicy(stack.ingest_url, population, seed=args.seed)
    async with Sender(stack.ingest_url, concurrency=16) as sender:
        sim = Simulation(population, scenario, chains, sender, seed=args.seed, remote=remote)
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
            timeline = await _while_running(stack, watcher.run(wait_page))
            killed = None
            if args.kill_switch and timeline.complete:
                killed = await _while_running(
                    stack, _kill_switch(stack, sim, receiver.pages(), args, say)
                )
            return timeline, killed
        finally:
            stop.set()
            await asyncio.gather(traffic, return_exceptions=True)
            await remote.aclose()


async def _while_running(stack: Stack, work: Coroutine[Any, Any, T]) -> T:
    task = asyncio.create_task(work)
    while not task.done():
        stack.check()  # a crashed component ends the demo with its log
        await asyncio.wait({task}, timeout=1.0)
    return task.result()


async def _kill_switch(
    stack: Stack,
    sim: Simulation,
    pages: list[Page],
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> KillTimeline:
    """Pull the kill switch the rotation page names, exactly as it names it."""
    alert = next(
        a
        for page in pages
        for a in page.alerts
        if a.get("labels", {}).get("alertname") == "PinwatchRotationBreakage"
    )
    labels, command = alert["labels"], alert["annotations"]["kill_switch"]
    say(f"pinwatch demo: kill switch: the page names the lever, pulled now:\n  $ {command}")
    play = KillSwitchPlay(
        sim,
        PolicyAdmin(stack.config),
        app=labels["app"],
        host=labels["host"],
        command=command,
        ingest_url=stack.ingest_url,
        consumer_url=stack.consumer_url,
        say=say,
    )
    interval = sim.population.config.report_interval
    refresh = stack.config.policy_refresh_seconds
    # Quiet: a report interval, plus the consumer's batch and commit, with no failure counted.
    return await play.play(quiet_seconds=interval + 3, within=4 * refresh + 4 * interval + 60)


async def _sleep_unless_done(seconds: float, task: asyncio.Task) -> None:
    await asyncio.wait({task}, timeout=seconds)
    if task.done():
        task.result()  # a traffic failure surfaces here
