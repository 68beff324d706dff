"""Fault drill: what clients and the store see when a part dies under a steady load.

For each fault, a fresh stack on this machine (local Kafka: one broker, or for
`broker-failover` a three-node KRaft cluster whose topics have replication 3 and min ISR 2;
`pinwatch ingest` and `pinwatch consume` as child processes, on free ports, in a temporary
directory):

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
   without a 202 (Kafka had it, the answer was lost: the retry's id dedup keeps it single);
   every answer that was neither 202 nor a 503 with Retry-After. And the seconds to recover:
   ingest's 503 window (first failed answer to the first 202 after it) and the first 202
   after the restart; the consumer's first insert after the restart and its longest pause
   between two inserts.

    timeout 900 .venv/bin/python benchmarks/drill_faults.py             # every fault, ~6 min
    .venv/bin/python benchmarks/drill_faults.py --fault consumer-sigkill --rate 40
    .venv/bin/python benchmarks/drill_faults.py --fault broker-failover --down 15

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
from devstack.localkafka import LocalKafka, LocalKafkaCluster, free_ports  # noqa: E402
from devstack.processes import signal_group  # noqa: E402
from devstack.stack import ChildCommand  # noqa: E402
from pinwatch.settings import Settings  # noqa: E402
from pinwatch.topics import TopicLayout, admin_client, ensure_topics, layouts  # noqa: E402

HOST = "api.drill.test"
APP = "com.example.drill"
KEY = "drill-ingest-key-0123456789"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the stack -----------------------------------------------------------------------------------


@dataclass
class Stack:
    """Kafka (one node or a cluster), one ingest, one consumer, all on this machine; `stop` ends
    every one."""

    work: Path
    settings: Settings
    env: dict[str, str]
    ca: CertificateAuthority
    kafka: LocalKafkaCluster
    ingest: ChildCommand
    consumer: ChildCommand

    @classmethod
    def create(cls, work: Path, brokers: int = 1) -> Stack:
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
        ingest, consumer, *kafka = free_ports(2 + 2 * brokers)
        cluster = LocalKafkaCluster.on_ports(Settings(), work / "kafka", kafka)
        values: dict[str, Any] = {
            "data_dir": work,
            "policy_file": policy,
            "public_roots_file": roots,
            "kafka_bootstrap": cluster.bootstrap,
            # A cluster: every partition on three nodes, a write acknowledged by two.
            "kafka_replication_factor": min(3, brokers),
            "kafka_min_insync_replicas": 2 if brokers >= 3 else 1,
            "kafka_partitions": max(2, brokers),
            "ingest_port": ingest,
            "consumer_port": consumer,
            "clickhouse_dsn": f"chdb:///{work / 'chdb'}",
            "clickhouse_database": "drill",
            "log_format": "json",
        }
        settings = Settings(**values)
        for node in cluster.nodes:
            node.settings = settings  # the jars' cache and heap
        env = {**os.environ, **{f"PINWATCH_{k.upper()}": str(v) for k, v in values.items()}}
        logs = work / "logs"
        ingest_url = f"http://127.0.0.1:{ingest}"
        consumer_url = f"http://127.0.0.1:{consumer}"
        return cls(
            work,
            settings,
            env,
            ca,
            cluster,
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
        self.kafka.start()
        asyncio.run(ensure_topics(self.settings))
        for child in (self.ingest, self.consumer):
            say(f"starting {child.name} ...")
            child.launch()
            child.wait_ready(120, lambda s, n=child.name: say(f"  {n}: waiting ({s:.0f}s)"))

    def stop(self) -> None:
        for child in (self.ingest, self.consumer):
            child.stop()
        self.kafka.stop()


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Answer:
    sent: float  # wall clock
    answered: float
    status: int  # 0: no answer (timeout, refused connection)
    retry_after: str | None = None

    @property
    def expected(self) -> bool:
        """A 202, or a 503 that tells the client when to come back: what ingest promises."""
        return self.status == 202 or (self.status == 503 and bool(self.retry_after))


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
            header = None
            try:
                response = await client.post("/v1/reports", json=body)
                status = response.status_code
                header = response.headers.get("retry-after")
            except httpx.HTTPError:
                status = 0
            self.answers.append(Answer(sent, time.time(), status, header))
            if status == 202:
                self.acknowledged.update(ids)
                return
            await asyncio.sleep(min(float(header or 1), 5.0))
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


async def _kill_and_restart(stack: Stack, node: LocalKafka, down: float) -> Timeline:
    """SIGKILL one Kafka node's process group; start it again on its data directory."""
    t = Timeline()
    node.kill()
    t.killed = time.time()
    say(f"  Kafka node {node.node_id} ({node.bootstrap}) SIGKILLed")
    await asyncio.sleep(down)
    t.restarted = time.time()
    say("  restarting it ...")
    await asyncio.to_thread(stack.kafka.restart, node)
    t.ready = time.time()
    say(f"  node ready after {t.ready - t.restarted:.1f}s")
    return t


async def broker_sigkill(stack: Stack, down: float) -> Timeline:
    """SIGKILL the only broker: nothing can take writes until it is back."""
    return await _kill_and_restart(stack, stack.kafka.nodes[0], down)


async def broker_failover(stack: Stack, down: float) -> Timeline:
    """SIGKILL the node leading partition 0 of the reports topic, in a three-node cluster: the
    other two elect new leaders and, with min ISR 2, go on taking writes."""
    async with admin_client(stack.settings) as admin:
        (topic,) = await admin.describe_topics([stack.settings.kafka_topic])
    leader = next(p["leader"] for p in topic["partitions"] if p["partition"] == 0)
    node = next(n for n in stack.kafka.nodes if n.node_id == leader)
    return await _kill_and_restart(stack, node, down)


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


@dataclass(frozen=True)
class Fault:
    inject: Callable[[Stack, float], Awaitable[Timeline]]
    brokers: int = 1  # nodes of the stack's Kafka


FAULTS: dict[str, Fault] = {
    "broker-sigkill": Fault(broker_sigkill),
    "consumer-sigkill": Fault(consumer_sigkill),
    "broker-failover": Fault(broker_failover, brokers=3),
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

    def longest_pause(self, since: float) -> float | None:
        """Longest time between two inserts seen from `since` on (a stall of the consumer)."""
        inserts = sorted({last for _, last, _ in self.samples if last >= since})
        return max((b - a for a, b in zip(inserts, inserts[1:], strict=False)), default=None)


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
        [sys.executable, "-c", _COUNT_IDS, stack.settings.clickhouse_url, "drill"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout)


@dataclass
class Result:
    fault: str
    topic: TopicLayout  # the reports topic as the fault found it
    requests: int
    statuses: Counter[int]
    unexpected: int  # answers neither 202 nor a 503 with Retry-After
    sent: int
    acknowledged: int
    stored: int
    missing: int
    doubled: int
    unacknowledged_stored: int
    abandoned: int
    failing_s: float | None  # ingest: first failed answer to the first 202 after it
    failed_span: tuple[float, float] | None  # first and last failed answer, from the kill
    ingest_back_s: float | None  # first 202 answered after the restart, from the restart
    consumer_back_s: float | None  # first insert after the restart, from the restart
    longest_pause_s: float | None  # longest time between two inserts, from the kill on
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
    fault = FAULTS[name]
    stack = Stack.create(work, fault.brokers)
    try:
        await asyncio.to_thread(stack.start)
        topic = (await layouts(stack.settings))[0]
        say(
            f"  {topic.name}: {topic.partitions} partitions, replication {topic.replication}, "
            f"min.insync.replicas {topic.min_insync_replicas}"
        )
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
        timeline = await fault.inject(stack, args.down)
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
    failed = [a.answered - timeline.killed for a in load.answers if a.status != 202]
    first_insert = watch.first_insert_after(timeline.restarted)
    return Result(
        fault=name,
        topic=topic,
        requests=len(load.answers),
        statuses=Counter(a.status for a in load.answers),
        unexpected=sum(1 for a in load.answers if not a.expected),
        sent=len(load.sent_ids),
        acknowledged=len(acked),
        stored=sum(1 for i in acked if i in rows),
        missing=sum(1 for i in acked if i not in rows),
        doubled=sum(1 for n in rows.values() if n > 1),
        unacknowledged_stored=sum(1 for i in rows if i not in acked),
        abandoned=load.abandoned,
        failing_s=failing,
        failed_span=(min(failed), max(failed)) if failed else None,
        ingest_back_s=ingest_back,
        consumer_back_s=first_insert - timeline.restarted if first_insert else None,
        longest_pause_s=watch.longest_pause(timeline.killed - 2),
        part_ready_s=timeline.ready - timeline.restarted,
    )


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


COLUMNS = (
    "fault",
    "Kafka",
    "requests",
    "202",
    "503",
    "other answers",
    "no answer",
    "reports acknowledged",
    "stored",
    "missing",
    "doubled",
    "stored without a 202",
    "503 window s",
    "failed answers, s after the kill",
    "first 202 after restart s",
    "part ready after restart s",
    "consumer inserts after restart s",
    "longest pause between inserts s",
)


def row(r: Result) -> list[str]:
    t = r.topic
    kafka = f"{t.replication} of {t.replication} nodes, min ISR {t.min_insync_replicas}"
    if t.replication == 1:
        kafka = "1 node"
    return [
        r.fault,
        kafka,
        f"{r.requests:,}",
        f"{r.statuses[202]:,}",
        f"{r.statuses[503]:,}",
        f"{r.unexpected - r.statuses[0]:,}",  # 503s without Retry-After and any other status
        f"{r.statuses[0]:,}",
        f"{r.acknowledged:,}",
        f"{r.stored:,}",
        f"{r.missing:,}",
        f"{r.doubled:,}",
        f"{r.unacknowledged_stored:,}",
        seconds(r.failing_s),
        "-" if r.failed_span is None else f"{r.failed_span[0]:.1f} - {r.failed_span[1]:.1f}",
        seconds(r.ingest_back_s),
        seconds(r.part_ready_s),
        seconds(r.consumer_back_s),
        seconds(r.longest_pause_s),
    ]


def table(results: list[Result]) -> str:
    """The results as a Markdown table (docs/reliability.md quotes it)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        lines.append("| " + " | ".join(row(r)) + " |")
    for r in results:
        others = {s: n for s, n in r.statuses.items() if s not in (0, 202, 503)}
        if others or r.abandoned:
            lines.append(
                f"{r.fault}: other answers {others}; batches abandoned after retries {r.abandoned}"
            )
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
    bad = [r for r in results if r.missing or r.doubled or r.unexpected - r.statuses[0]]
    return 1 if bad else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SIGKILL a part of a local pinwatch stack under steady load, restart it, and "
        "reconcile by report id: acknowledged, stored, missing, doubled; 503s; seconds to "
        "recover. Exit 1 when an acknowledged report is missing, any is doubled, or ingest "
        "answered anything but 202 or 503 with Retry-After."
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
