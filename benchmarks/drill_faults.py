"""Fault drill: what clients and the store see when a part dies under a steady load.

For each fault, a fresh stack on this machine (a local Kafka broker, `pinwatch ingest` and
`pinwatch consume` as child processes, on free ports, in a temporary directory):

1. A steady client load: `--rate` native batch POSTs per second of `--reports` reports each,
   every report with an id of its own. Like a real client, a batch answered anything but 202
   (a 503, a timeout, a refused connection) is sent again with the same ids, after Retry-After
   (at most `--retries` times).
2. After `--warmup` seconds, the fault (one function per fault, see FAULTS): the part is
   SIGKILLed, left down `--down` seconds, and started again.
3. The load goes on `--after` seconds past the part's return, then stops; the consumer catches
   up (lag 0) and is stopped cleanly.
4. Reconciliation by report id against ClickHouse (`reports`): acknowledged (some attempt got
   202), stored, missing (acknowledged, not stored), doubled (stored more than once), stored
   without a 202 (Kafka had it, the answer was lost: the retry's id dedup keeps it single).
   And the seconds to recover: ingest's 503 window (first failed answer to the first 202 after
   it) and the first 202 after the restart; the consumer's first insert after the restart.

    timeout 900 .venv/bin/python benchmarks/drill_faults.py             # both faults, ~4 min
    .venv/bin/python benchmarks/drill_faults.py --fault consumer-sigkill --rate 40

Figures and how to read them: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.certs import CertificateAuthority  # noqa: E402
from devstack.localkafka import LocalKafka, free_ports  # noqa: E402
from devstack.processes import signal_group  # noqa: E402
from devstack.stack import ChildCommand  # noqa: E402
from pinwatch.settings import Settings  # noqa: E402
from pinwatch.topics import ensure_topics  # noqa: E402

HOST = "api.drill.test"
APP = "com.example.drill"
KEY = "drill-ingest-key-0123456789"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the stack -----------------------------------------------------------------------------------


@dataclass
class Stack:
    """One broker, one ingest, one consumer, all on this machine; `stop` ends every one."""

    work: Path
    settings: Settings
    env: dict[str, str]
    ca: CertificateAuthority
    broker: LocalKafka
    ingest: ChildCommand
    consumer: ChildCommand

    @classmethod
    def create(cls, work: Path) -> Stack:
        ca = CertificateAuthority.load(work / "pki", host=HOST)
        policy = work / "policy.yaml"
        policy.write_text(
            f'apps:\n  - id: {APP}\n    ingest_keys: ["{KEY}"]\nhosts:\n  - host: {HOST}\n'
            "    phase: enforce\n    pins:\n"
            f'      - {{sha256: "{ca.pin("primary")}", role: primary}}\n'
            f'      - {{sha256: "{ca.pin("backup")}", role: backup}}\n'
        )
        roots = work / "public-roots.pem"
        roots.write_bytes(ca.public_roots_pem())
        kafka, controller, ingest, consumer = free_ports(4)
        values: dict[str, Any] = {
            "data_dir": work,
            "policy_file": policy,
            "public_roots_file": roots,
            "kafka_bootstrap": f"127.0.0.1:{kafka}",
            "kafka_controller_port": controller,
            "ingest_port": ingest,
            "consumer_port": consumer,
            "clickhouse_dsn": f"chdb:///{work / 'chdb'}",
            "clickhouse_database": "drill",
            "log_format": "json",
        }
        settings = Settings(**values)
        env = {**os.environ, **{f"PINWATCH_{k.upper()}": str(v) for k, v in values.items()}}
        logs = work / "logs"
        ingest_url = f"http://127.0.0.1:{ingest}"
        consumer_url = f"http://127.0.0.1:{consumer}"
        return cls(
            work,
            settings,
            env,
            ca,
            LocalKafka.from_settings(settings),
            ChildCommand("ingest", ["ingest"], env, logs / "ingest.log", f"{ingest_url}/readyz"),
            ChildCommand(
                "consumer", ["consume"], env, logs / "consumer.log", f"{consumer_url}/readyz"
            ),
        )

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ingest_port}"

    @property
    def consumer_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.consumer_port}"

    def start(self) -> None:
        say(f"starting Kafka on {self.settings.kafka_bootstrap} ...")
        self.broker.start()
        asyncio.run(ensure_topics(self.settings))
        for child in (self.ingest, self.consumer):
            say(f"starting {child.name} ...")
            child.launch()
            child.wait_ready(120, lambda s, n=child.name: say(f"  {n}: waiting ({s:.0f}s)"))

    def stop(self) -> None:
        for child in (self.ingest, self.consumer):
            child.stop()
        self.broker.stop()


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Answer:
    sent: float  # wall clock
    answered: float
    status: int  # 0: no answer (timeout, refused connection)


@dataclass
class Load:
    """A steady stream of native batches, each retried with its ids until a 202."""

    stack: Stack
    rate: float
    per_request: int
    retries: int
    answers: list[Answer] = field(default_factory=list)
    sent_ids: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    abandoned: int = 0  # batches still not acknowledged after every retry

    def __post_init__(self) -> None:
        primary, rotated = self.stack.ca.chain("primary"), self.stack.ca.chain("rotated")
        # Three successes (pins only) for each failure (a rotated key, with its chain).
        self.shapes = [
            {"result": "pin_mismatch", "observed_pins": rotated.pins, "served_chain": rotated.b64},
            *[{"result": "ok", "observed_pins": primary.pins}] * 3,
        ]

    def batch(self, device: str) -> tuple[list[str], dict[str, Any]]:
        ids = [str(uuid.uuid4()) for _ in range(self.per_request)]
        reports = [
            {"id": report_id, "type": "pin_validation", "host": HOST, "enforced": True}
            | self.shapes[i % len(self.shapes)]
            for i, report_id in enumerate(ids)
        ]
        body = {
            "app": {"id": APP, "version": "1.0.0", "platform": "ios", "os_version": "18.1"},
            "device": {"id": device, "network": "wifi"},
            "reports": reports,
        }
        return ids, body

    async def send(self, client: httpx.AsyncClient, device: str) -> None:
        ids, body = self.batch(device)
        self.sent_ids.update(ids)
        for _ in range(self.retries + 1):
            sent = time.time()
            try:
                response = await client.post("/v1/reports", json=body)
                status = response.status_code
                retry_after = float(response.headers.get("retry-after", "1"))
            except httpx.HTTPError:
                status, retry_after = 0, 1.0
            self.answers.append(Answer(sent, time.time(), status))
            if status == 202:
                self.acknowledged.update(ids)
                return
            await asyncio.sleep(min(retry_after, 5.0))
        self.abandoned += 1

    async def run(self, stop: asyncio.Event) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        headers = {"X-Pinwatch-Key": KEY}
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(
            base_url=self.stack.ingest_url, headers=headers, timeout=10, limits=limits
        ) as client:
            started, n = time.monotonic(), 0
            while not stop.is_set():
                task = asyncio.create_task(self.send(client, f"device-{n % 500}"))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                # Steady: the n-th request leaves at n / rate, however long answers take.
                delay = started + n / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.gather(*tasks)


# --- faults (one function each: what happens, and when) ------------------------------------------


@dataclass
class Timeline:
    killed: float = 0.0  # wall clock
    restarted: float = 0.0
    ready: float = 0.0


async def broker_sigkill(stack: Stack, down: float) -> Timeline:
    """SIGKILL the broker's process group; start it again on the same data directory."""
    t = Timeline()
    assert stack.broker.process is not None
    signal_group(stack.broker.process.pid, signal.SIGKILL)
    stack.broker.process.wait()
    t.killed = time.time()
    say("  broker SIGKILLed")
    await asyncio.sleep(down)
    t.restarted = time.time()
    say("  restarting the broker ...")
    await asyncio.to_thread(stack.broker.start)
    t.ready = time.time()
    say(f"  broker ready after {t.ready - t.restarted:.1f}s")
    return t


async def consumer_sigkill(stack: Stack, down: float) -> Timeline:
    """SIGKILL the consumer's process group; start `pinwatch consume` again."""
    t = Timeline()
    process = stack.consumer.process
    assert process is not None
    signal_group(process.pid, signal.SIGKILL)
    process.wait()
    t.killed = time.time()
    say("  consumer SIGKILLed")
    await asyncio.sleep(down)
    t.restarted = time.time()
    say("  restarting the consumer ...")
    stack.consumer.launch()
    await asyncio.to_thread(stack.consumer.wait_ready, 120, lambda s: None)
    t.ready = time.time()
    say(f"  consumer ready after {t.ready - t.restarted:.1f}s")
    return t


FAULTS: dict[str, Callable[[Stack, float], Awaitable[Timeline]]] = {
    "broker-sigkill": broker_sigkill,
    "consumer-sigkill": consumer_sigkill,
}


# --- watching the consumer, reconciling -----------------------------------------------------------


def metric(text: str, name: str) -> float | None:
    total = None
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Watch:
    """The consumer's /metrics sampled a few times a second: (wall clock, last insert, lag)."""

    url: str
    samples: list[tuple[float, float, float]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while not stop.is_set():
                try:
                    text = (await client.get("/metrics")).text
                    last = metric(text, "pinwatch_consumer_last_insert_timestamp_seconds") or 0.0
                    lag = metric(text, "pinwatch_consumer_lag") or 0.0
                    self.samples.append((time.time(), last, lag))
                except httpx.HTTPError:
                    pass  # the consumer is down
                await asyncio.sleep(0.25)

    def first_insert_after(self, moment: float) -> float | None:
        return next((last for _, last, _ in self.samples if last > moment), None)


async def caught_up(stack: Stack, seconds: float = 300) -> None:
    """Until the consumer has handled everything on the topic (lag 0 twice in a row)."""
    deadline, zeros = time.monotonic() + seconds, 0
    async with httpx.AsyncClient(base_url=stack.consumer_url, timeout=5) as client:
        while zeros < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the consumer did not catch up in {seconds:.0f}s")
            try:
                lag = metric((await client.get("/metrics")).text, "pinwatch_consumer_lag")
            except httpx.HTTPError:
                lag = None
            zeros = zeros + 1 if lag == 0 else 0
            await asyncio.sleep(1.0)


_COUNT_IDS = """
import json, sys, clickhouse_connect
c = clickhouse_connect.get_client(dsn=sys.argv[1])
rows = c.query(f"SELECT id, count() FROM {sys.argv[2]}.reports GROUP BY id").result_rows
json.dump({i: n for i, n in rows}, sys.stdout)
"""


def stored_ids(stack: Stack) -> dict[str, int]:
    """Report id -> rows, read by a short child process (chDB: one engine per process, and
    each drill has a data directory of its own)."""
    out = subprocess.run(
        [sys.executable, "-c", _COUNT_IDS, stack.settings.clickhouse_dsn, "drill"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout)


@dataclass
class Result:
    fault: str
    requests: int
    statuses: Counter[int]
    sent: int
    acknowledged: int
    stored: int
    missing: int
    doubled: int
    unacknowledged_stored: int
    abandoned: int
    failing_s: float | None  # ingest: first failed answer to the first 202 after it
    ingest_back_s: float | None  # first 202 answered after the restart, from the restart
    consumer_back_s: float | None  # first insert after the restart, from the restart
    part_ready_s: float


def ingest_window(answers: list[Answer], t: Timeline) -> tuple[float | None, float | None]:
    ordered = sorted(answers, key=lambda a: a.answered)
    failed = [a for a in ordered if a.status != 202 and a.answered >= t.killed]
    back = next((a for a in ordered if a.status == 202 and a.answered >= t.restarted), None)
    if not failed:
        return None, None
    first_failure = failed[0].answered
    recovered = next(
        (a.answered for a in ordered if a.status == 202 and a.answered > first_failure), None
    )
    failing = recovered - first_failure if recovered is not None else None
    return failing, (back.answered - t.restarted if back is not None else None)


async def drill(name: str, args: argparse.Namespace, work: Path) -> Result:
    say(f"=== {name} ===")
    stack = Stack.create(work)
    try:
        await asyncio.to_thread(stack.start)
        load = Load(stack, args.rate, args.reports, args.retries)
        watch = Watch(stack.consumer_url)
        stop_load, stop_watch = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(load.run(stop_load)),
            asyncio.create_task(watch.run(stop_watch)),
        ]

        async def progress(phase: str, seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await asyncio.sleep(min(5.0, max(0.0, end - time.monotonic())))
                codes = Counter(a.status for a in load.answers)
                say(
                    f"  {phase}: {len(load.acknowledged):,} reports acknowledged, "
                    f"answers {dict(sorted(codes.items()))}"
                )

        await progress("steady load", args.warmup)
        timeline = await FAULTS[name](stack, args.down)
        await progress("after the fault", args.after)
        stop_load.set()
        await tasks[0]
        say("load stopped; waiting for the consumer to catch up ...")
        await caught_up(stack)
        stop_watch.set()
        await tasks[1]
        stack.consumer.stop(60)  # SIGTERM: it inserts and commits what it holds
        say("reconciling by report id ...")
        rows = await asyncio.to_thread(stored_ids, stack)
    finally:
        await asyncio.to_thread(stack.stop)
    acked = load.acknowledged
    failing, ingest_back = ingest_window(load.answers, timeline)
    first_insert = watch.first_insert_after(timeline.restarted)
    return Result(
        fault=name,
        requests=len(load.answers),
        statuses=Counter(a.status for a in load.answers),
        sent=len(load.sent_ids),
        acknowledged=len(acked),
        stored=sum(1 for i in acked if i in rows),
        missing=sum(1 for i in acked if i not in rows),
        doubled=sum(1 for n in rows.values() if n > 1),
        unacknowledged_stored=sum(1 for i in rows if i not in acked),
        abandoned=load.abandoned,
        failing_s=failing,
        ingest_back_s=ingest_back,
        consumer_back_s=first_insert - timeline.restarted if first_insert else None,
        part_ready_s=timeline.ready - timeline.restarted,
    )


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[Result]) -> str:
    head = (
        "fault              requests  202     503   no answer  reports sent  acknowledged  "
        "stored  missing  doubled  stored w/o 202  503 window s  202 after restart s  "
        "part ready s  consumer inserts after restart s"
    )
    lines = [head]
    for r in results:
        lines.append(
            f"{r.fault:<18} {r.requests:>8}  {r.statuses[202]:>6}  {r.statuses[503]:>4}  "
            f"{r.statuses[0]:>9}  {r.sent:>12}  {r.acknowledged:>12}  {r.stored:>6}  "
            f"{r.missing:>7}  {r.doubled:>7}  {r.unacknowledged_stored:>14}  "
            f"{seconds(r.failing_s):>12}  {seconds(r.ingest_back_s):>19}  "
            f"{seconds(r.part_ready_s):>12}  {seconds(r.consumer_back_s):>32}"
        )
        others = {s: n for s, n in r.statuses.items() if s not in (0, 202, 503)}
        if others or r.abandoned:
            lines.append(f"  other answers {others}; batches abandoned after retries {r.abandoned}")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    names = list(FAULTS) if args.fault == "all" else [args.fault]
    results = []
    for name in names:
        work = Path(tempfile.mkdtemp(prefix=f"pinwatch-drill-{name}-"))
        try:
            results.append(await drill(name, args, work))
        finally:
            if args.keep:
                say(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"load: {args.rate:g} requests/s of {args.reports} reports; fault after "
        f"{args.warmup:g}s, down {args.down:g}s, load {args.after:g}s more after the restart"
    )
    print(table(results))
    bad = [r for r in results if r.missing or r.doubled]
    return 1 if bad else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SIGKILL a part of a local pinwatch stack under steady load, restart it, and "
        "reconcile by report id: acknowledged, stored, missing, doubled; 503s; seconds to "
        "recover. Exit 1 when an acknowledged report is missing or any is doubled."
    )
    parser.add_argument("--fault", choices=["all", *FAULTS], default="all", help="(all)")
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second (25)")
    parser.add_argument("--reports", type=int, default=8, help="reports per request (8)")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before the fault")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the part stays down")
    parser.add_argument("--after", type=float, default=20.0, help="load seconds after restart")
    parser.add_argument("--retries", type=int, default=5, help="retries of a failed batch (5)")
    parser.add_argument("--keep", action="store_true", help="keep the work directories (logs)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
