"""Time to page, end to end: the simulator's incidents played through the whole local stack at
production alerting intervals, with the seconds from the first failing report to the page
delivered, and the pages that should not have come.

For each case, a fresh stack as `pinwatch up` runs it (`devstack.stack.Stack`: ingest, consumer,
prober, Prometheus with the shipped rules, Alertmanager with the shipped routing and the page
receiver), as processes on free ports, in a directory of its own. Only the Kafka broker is
shared, started once by this script (or `--kafka-bootstrap`), and each stack has topics and a
consumer group of its own. A fresh stack, not the same one reset: every alert reads windows of
2 to 10 minutes and the failing-devices gauges count the last 5 minutes of ClickHouse, so one
case's traffic would still be in the next case's numbers; a fresh Prometheus, Alertmanager and
ClickHouse cost about 30 s a case, a fresh broker would cost more and change nothing.

Each case (CASES): steady traffic from a simulated population (the example policy, the demo
PKI, each network its own loopback /24) for `--warm-up` seconds, so every rate window holds
traffic from before; then the scenario's change (`pinwatch simulate`'s scenarios), and the
traffic goes on until the expected page arrives or, for a case that must page nobody,
`--quiet-watch` seconds have passed (longer than the slowest page alert takes: the 2 minute
`for` of PinwatchPinFailureRateHigh after its 2 minute window). Time to page is from the first
failing report ingest accepted (the kill, for "consumer killed") to the page at the receiver;
a false page is any page-severity alert delivered that the case does not expect.

    .venv/bin/python benchmarks/bench_detection.py                  # 15 s intervals, ~45 min
    .venv/bin/python benchmarks/bench_detection.py --scrape-interval 5 --only busy-host-rotation

Figures: benchmarks/README.md and docs/alerting.md ("Time to page").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.certs import demo_pki_dir  # noqa: E402
from devstack.localkafka import LocalKafka, free_ports  # noqa: E402
from devstack.simulate import (  # noqa: E402
    SCENARIOS,
    Chains,
    PopulationConfig,
    Sender,
    Simulation,
    build_population,
    describe,
)
from devstack.stack import Page, Stack, StackOptions  # noqa: E402
from pinwatch.policy import load_policy  # noqa: E402
from pinwatch.settings import Settings  # noqa: E402


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Case:
    name: str
    scenario: str  # a `pinwatch simulate` scenario
    expect: str | None  # the page it must produce; None: it must page nobody
    what: str  # one line for the table
    rate: float = 2.5  # requests per device, host and 5 s interval: 100 validations/s at 200
    devices: int = 200
    kill_consumer: bool = False


DEVICES, INTERVAL = 200, 5.0
CASES = (
    Case(
        "quiet-host-rotation",
        "unplanned_rotation",
        "PinwatchRotationBreakage",
        "the API host rotates to a public unpinned key; ~1 validation/s before",
        rate=0.025,
    ),
    Case(
        "busy-host-rotation",
        "unplanned_rotation",
        "PinwatchRotationBreakage",
        "the same, ~100 successful enforced validations/s before",
    ),
    Case(
        "interception",
        "interception",
        None,
        "a TLS-inspecting proxy (private root) on one of 8 networks",
    ),
    Case("dns-outage", "dns_outage", None, "the API host stops resolving"),
    Case(
        "flooding-device",
        "device_flood",
        None,
        "one device reports every failure unaggregated, 25x the traffic, one network",
    ),
    Case("planned-rotation", "planned_rotation", None, "the API host moves to its pinned backup"),
    Case(
        "bad-release",
        "bad_release",
        "PinwatchAppVersionFailing",
        "~40% upgrade to 9.9.0, which ships a wrong pin set",
    ),
    Case(
        "consumer-killed",
        "steady",
        "PinwatchScrapeTargetDown",
        "the consumer is SIGKILLed and stays down (nothing restarts it here)",
        kill_consumer=True,
    ),
)


@dataclass
class Outcome:
    case: Case
    validations_per_second: float
    started_at: float | None = None  # first failing report accepted, or the kill (time.time)
    paged_at: float | None = None  # the expected page at the receiver
    false_pages: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0  # the case's whole run, stack included

    @property
    def time_to_page(self) -> float | None:
        if self.started_at is None or self.paged_at is None:
            return None
        return self.paged_at - self.started_at

    @property
    def verdict(self) -> str:
        if self.case.expect is None:
            return "ok" if not self.false_pages else "FALSE PAGE"
        if self.paged_at is None:
            return "NO PAGE"
        return "ok" if not self.false_pages else "FALSE PAGE"


def alerts_of(pages: list[Page]) -> list[tuple[float, str]]:
    return [(p.received_at, a["labels"].get("alertname", "?")) for p in pages for a in p.alerts]


async def play(case: Case, stack: Stack, args: argparse.Namespace, outcome: Outcome) -> None:
    policy = load_policy(stack.config.policy_file)
    population = build_population(
        policy,
        PopulationConfig(
            devices=case.devices, report_interval=INTERVAL, requests_per_interval=case.rate
        ),
        seed=1,
    )
    assert stack.receiver is not None
    receiver = stack.receiver
    watch = args.page_deadline if case.expect else args.quiet_watch
    async with Sender(stack.ingest_url, concurrency=16) as sender:
        sim = Simulation(
            population, SCENARIOS[case.scenario], Chains(demo_pki_dir(stack.config)), sender
        )
        stop = asyncio.Event()
        traffic = asyncio.create_task(
            sim.run(
                args.warm_up + watch + 5,
                change_after=None if case.kill_consumer else args.warm_up,
                progress=lambda s: say("  " + describe(s)),
                progress_every=30.0,
                stop=stop,
            )
        )
        try:
            await asyncio.wait({traffic}, timeout=args.warm_up)
            if traffic.done():
                traffic.result()  # a failure of the traffic itself surfaces here
            if case.kill_consumer:
                assert stack.consumer is not None and stack.consumer.process is not None
                os.kill(stack.consumer.process.pid, signal.SIGKILL)
                outcome.started_at = time.time()
                say("  consumer SIGKILLed")
            else:
                say(f"  change: {SCENARIOS[case.scenario].summary}")
            deadline = time.monotonic() + watch
            while time.monotonic() < deadline and not traffic.done():
                if outcome.started_at is None and sender.tally.first_failure_sent is not None:
                    outcome.started_at = sender.tally.first_failure_sent
                    say("  first failing report accepted")
                delivered = alerts_of(receiver.pages())
                hit = [at for at, name in delivered if name == case.expect]
                if hit and outcome.started_at is not None:
                    outcome.paged_at = hit[0]
                    say(f"  paged: {case.expect}, {outcome.time_to_page:.1f} s")
                    break
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(traffic, return_exceptions=True)
        outcome.false_pages = [
            name for _, name in alerts_of(receiver.pages()) if name != case.expect
        ]
        outcome.statuses = dict(sender.tally.statuses)


def run_case(
    number: int, case: Case, args: argparse.Namespace, bootstrap: str, work: Path
) -> Outcome:
    suffix = f"{case.name}-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        data_dir=work / case.name,
        kafka_bootstrap=bootstrap,
        kafka_topic=f"bench-detect-{suffix}",
        kafka_dead_letter_topic=f"bench-detect-dl-{suffix}",
        kafka_consumer_group=f"bench-detect-{suffix}",
        log_format="json",
    )
    stack = Stack(
        settings,
        StackOptions(
            data_dir=work / case.name,
            fresh=True,
            free_ports=True,
            kafka_bootstrap=bootstrap,
            scrape_interval=args.scrape_interval,
            evaluation_interval=args.scrape_interval,
            local_pages_only=True,
        ),
        say=lambda _line: None,
    )
    per_second = case.devices * case.rate / INTERVAL
    outcome = Outcome(case, validations_per_second=per_second)
    say(f"[{number}/{len(args.cases)}] {case.name}: {case.what}; starting a fresh stack")
    began = time.monotonic()
    try:
        stack.start()
        up = time.monotonic() - began
        say(f"  stack up in {up:.0f} s; {args.warm_up:.0f} s of steady traffic")
        asyncio.run(play(case, stack, args, outcome))
    finally:
        stack.stop()
    outcome.seconds = time.monotonic() - began
    say(f"  {outcome.verdict} ({outcome.seconds:.0f} s)")
    return outcome


def table(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    rows = [
        ("case", "validations/s before", "expected page", "time to page", "false pages", "verdict"),
    ]
    for o in outcomes:
        ttp = o.time_to_page
        rows.append(
            (
                o.case.name,
                f"{o.validations_per_second:g}",
                o.case.expect or "none",
                "-" if ttp is None else f"{ttp:.1f} s",
                ", ".join(o.false_pages) if o.false_pages else "0",
                o.verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    head = (
        f"time to page, {dt.date.today().isoformat()}: scrape and evaluation every "
        f"{args.scrape_interval:g} s, {args.warm_up:g} s of steady traffic before each change, "
        f"{DEVICES} devices on 8 networks (validations/s: the API host's, enforced)"
    )
    return "\n".join([head, *lines])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_detection.py",
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases:\n"
        + "\n".join(f"  {c.name:<22} {c.what} (pages: {c.expect or 'nobody'})" for c in CASES),
    )
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=15.0,
        help="Prometheus scrape and evaluation interval, seconds (default 15, production)",
    )
    parser.add_argument(
        "--warm-up", type=float, default=150.0, help="steady traffic before the change (s)"
    )
    parser.add_argument(
        "--quiet-watch",
        type=float,
        default=240.0,
        help="how long a case that must page nobody is watched after the change (s)",
    )
    parser.add_argument(
        "--page-deadline",
        type=float,
        default=300.0,
        help="longest wait for the expected page after the change (s)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[c.name for c in CASES],
        help="run this case only (repeatable)",
    )
    parser.add_argument(
        "--kafka-bootstrap", default=None, help="use this running broker instead of starting one"
    )
    args = parser.parse_args(argv)
    args.cases = [c for c in CASES if not args.only or c.name in args.only]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-detection-") as tmp:
        work = Path(tmp)
        broker: LocalKafka | None = None
        bootstrap = args.kafka_bootstrap
        if bootstrap is None:
            kafka, controller = free_ports(2)
            broker = LocalKafka.from_settings(
                Settings(
                    data_dir=work,
                    kafka_bootstrap=f"127.0.0.1:{kafka}",
                    kafka_controller_port=controller,
                )
            )
            say(f"starting Kafka on {broker.bootstrap} (shared by every case) ...")
            broker.start()
            bootstrap = broker.bootstrap
        try:
            for number, case in enumerate(args.cases, 1):
                outcomes.append(run_case(number, case, args, bootstrap, work))
        finally:
            if broker is not None:
                broker.stop()
    print("\n" + table(outcomes, args), flush=True)
    return 0 if all(o.verdict == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
