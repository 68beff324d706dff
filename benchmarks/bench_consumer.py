"""Consumer throughput: reports/s per process from Kafka into ClickHouse, against the ceiling.

1. Produces N reports (native-format records in the envelope ingest writes, batches of --batch
   reports per Kafka message, a realistic mix: successes and failures with real chains, network
   errors) to a fresh topic. Without --bootstrap it starts a local broker of its own first
   (devstack.localkafka, as the tests do) and says so.
2. Runs the real consumer (one process, this one) until every report is inserted and
   committed: reports/s, and where a report's microseconds go (fetch, decode, dedup,
   classify, columns, lookup, insert, evidence; the event loop's CPU in all), which answered
   the retry lookups (memory or ClickHouse), and how much its RSS grew while it ran. Once it
   has handled the last message it is asked to stop, which inserts and commits at once (the
   batch-age and commit-interval timers are the stream end's latency, not throughput).
3. The ceiling, in the same run: a bare clickhouse-connect insert of the very same rows (same
   schema, views included, same batch size) with no Kafka, decoding, classification or retry
   lookup, both ways clickhouse-connect inserts: Arrow (what the consumer sends) and Native
   (column lists, the column types given). The ratio is taken against the faster one.
4. Prints both and their ratios, wall clock and per CPU-second of this process, and its peak
   RSS (the generated reports and the ceiling's tables included).

    timeout 900 .venv/bin/python benchmarks/bench_consumer.py   # 300k reports, ~2 minutes
    .venv/bin/python benchmarks/bench_consumer.py --bootstrap 127.0.0.1:9092 --reports 500000

Figures and their history: benchmarks/README.md ("Consumer").
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumers.batch import Batch, Part  # noqa: E402
from consumers.consumer import Consumer  # noqa: E402
from consumers.decode import decode  # noqa: E402
from consumers.schema import REPORT_COLUMN_NAMES, REPORT_COLUMN_TYPES  # noqa: E402
from consumers.store import Store  # noqa: E402
from devstack.certs import CertificateAuthority  # noqa: E402
from devstack.localkafka import scratch_broker  # noqa: E402
from pinwatch import gctune  # noqa: E402
from pinwatch.kafka import client_args  # noqa: E402
from pinwatch.record import Record, encode_batch  # noqa: E402
from pinwatch.settings import Settings  # noqa: E402
from pinwatch.topics import ensure_topics  # noqa: E402
from pinwatch.vocabulary import ErrorCategory, Format, Kind, Result  # noqa: E402

PIECES = ("fetch", "decode", "dedup", "classify", "columns", "lookup", "insert", "evidence")

HOST = "api.bench.test"
APP = "com.example.bench"


def write_policy(ca: CertificateAuthority, path: Path) -> None:
    path.write_text(
        "apps:\n"
        f"  - id: {APP}\n"
        '    ingest_keys: ["bench-ingest-key-0123456789"]\n'
        "hosts:\n"
        f"  - host: {HOST}\n"
        "    include_subdomains: true\n"
        "    phase: enforce\n"
        "    pins:\n"
        f'      - {{sha256: "{ca.pin("primary")}", role: primary}}\n'
        f'      - {{sha256: "{ca.pin("backup")}", role: backup}}\n'
    )


def make_records(ca: CertificateAuthority, n: int) -> list[Record]:
    primary, rotated, proxy = ca.chain("primary"), ca.chain("rotated"), ca.intercepted_chain()
    pins = {id(c): c.pins for c in (primary, rotated, proxy)}  # computed once, not per report
    chains = {id(c): c.b64 for c in (primary, rotated, proxy)}
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        common: dict[str, Any] = dict(
            id=str(uuid.uuid4()),
            format=Format.NATIVE,
            app_id=APP,
            host=HOST,
            received_at_ms=now,
            event_at_ms=now - 1500,
            sent_at_ms=now - 500,
            app_version=f"5.{i % 7}.0",
            platform="ios" if i % 2 else "android",
            os_version="18.1",
            device=f"{i % 50_000:032x}",
            network="wifi",
            client_network=f"203.0.{i % 200}.0/24",
        )
        kind = i % 10
        if kind < 6:  # successes, aggregated by the client
            out.append(
                Record(
                    kind=Kind.PIN_VALIDATION,
                    result=Result.OK,
                    enforced=True,
                    observed_pins=pins[id(primary)],
                    count=20,
                    **common,
                )
            )
        elif kind < 8:
            chain = rotated if kind == 6 else proxy
            out.append(
                Record(
                    kind=Kind.PIN_VALIDATION,
                    result=Result.PIN_MISMATCH,
                    enforced=True,
                    observed_pins=pins[id(chain)],
                    served_chain=chains[id(chain)],
                    **common,
                )
            )
        else:
            out.append(
                Record(
                    kind=Kind.NETWORK_ERROR,
                    error=ErrorCategory.TIMEOUT,
                    detail="NSURLErrorTimedOut",
                    count=2,
                    **common,
                )
            )
    return out


async def produce(settings: Settings, values: list[bytes]) -> dict[tuple[str, int], int]:
    """Sends the records; returns the end offset of each partition written."""
    producer = AIOKafkaProducer(
        **client_args(settings),
        acks="all",
        max_request_size=8 * 1024 * 1024,
        linger_ms=5,
    )
    await producer.start()
    try:
        futures = [await producer.send(settings.kafka_topic, value) for value in values]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    ends: dict[tuple[str, int], int] = {}
    for meta in sent:
        key = (meta.topic, meta.partition)
        ends[key] = max(ends.get(key, 0), meta.offset + 1)
    return ends


async def run_consumer(
    settings: Settings, store: Store, total: int, ends: dict[tuple[str, int], int]
) -> tuple[float, float, dict[str, float]]:
    """Until every report is inserted and committed. Once the consumer has handled the last
    message of every partition it is asked to stop, which inserts its open batch and commits at
    once: otherwise the run's end would wait out `batch_max_seconds` and
    `commit_interval_seconds` (up to 2 s of a few seconds' run), a latency of the stream's end,
    not throughput."""
    consumer = Consumer(settings, store)
    consumer.timings.enabled = True
    await consumer.start()
    gctune.for_batches()  # as `pinwatch consume` does
    task = asyncio.create_task(consumer.run())
    # The clock starts once the group gave this consumer its partitions: joining a group takes
    # the broker's group.initial.rebalance.delay.ms, which is not throughput.
    for _ in range(6000):
        if consumer.assignment or task.done():
            break
        await asyncio.sleep(0.01)
    started, cpu_started = time.perf_counter(), time.process_time()
    loop_started = time.thread_time()
    consumer.timings.clear()
    registry = consumer.metrics.registry

    def committed() -> int:
        return int(
            sum(
                registry.get_sample_value("pinwatch_consumer_inserted_reports_total", {"kind": k})
                or 0
                for k in ("pin_validation", "network_error")
            )
        )

    last_print = started
    rss_started = peak_rss = _rss_mib()
    try:
        while True:
            peak_rss = max(peak_rss, _rss_mib())
            positions = consumer.positions
            if all(positions.get(tp, 0) >= end for tp, end in ends.items()):
                break
            if task.done():
                task.result()
                raise RuntimeError("consumer stopped early")
            if time.perf_counter() - last_print > 2:
                print(f"  consumer: {committed():,}/{total:,} reports committed", flush=True)
                last_print = time.perf_counter()
            await asyncio.sleep(0.02)  # polling costs CPU in this process
    finally:
        consumer.stop()
        await task
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    loop_cpu = time.thread_time() - loop_started
    if committed() != total:
        raise RuntimeError(f"consumer committed {committed()} reports, sent {total}")
    lookups = {
        source: int(
            registry.get_sample_value(
                "pinwatch_consumer_retry_lookups_total", {"answered_by": source}
            )
            or 0
        )
        for source in ("memory", "clickhouse")
    }
    print(
        f"  retry lookups: {lookups['memory']} batches answered from memory "
        f"({len(consumer.steps.recent):,} ids held), {lookups['clickhouse']} read ClickHouse",
        flush=True,
    )
    pieces = consumer.timings.per_report()
    pieces["event loop"] = loop_cpu / total * 1e6
    print(
        f"  consumer RSS: {rss_started:,.0f} MiB at its start (generated data, ceiling tables), "
        f"+{peak_rss - rss_started:,.0f} MiB at most while it ran",
        flush=True,
    )
    return elapsed, cpu, pieces


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def ceiling_tables(settings: Settings, values: list[bytes], rows: int) -> list[pa.Table]:
    """The consumer's own `reports` tables of these messages, batches of `rows` (not timed)."""
    consumer = Consumer(settings, Store.from_settings(settings))
    classify = consumer.steps.classify
    tables, batch = [], Batch()
    for offset, value in enumerate(values):
        block, _ = decode(value)
        batch.add(
            Part(
                (settings.kafka_topic, 0, offset),
                block,
                [classify.labels(p) for p in block.profiles],
            )
        )
        if batch.rows >= rows:
            tables.append(batch.reports_table())
            batch = Batch()
    if batch.rows:
        tables.append(batch.reports_table())
    return tables


def native_columns(table: pa.Table) -> list[list[Any]]:
    """The same rows as clickhouse-connect's Native insert takes them: column lists, times as
    integer milliseconds (DateTime64(3) takes raw ticks)."""
    columns = []
    for column in table.columns:
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        columns.append(column.to_pylist())
    return columns


async def run_ceiling(store: Store, tables: list[pa.Table], native: bool) -> tuple[float, float]:
    """The same rows, classified beforehand (not timed), inserted bare, Arrow or Native."""
    batches: list[Any] = [native_columns(t) for t in tables] if native else tables
    started, cpu_started = time.perf_counter(), time.process_time()
    for n, data in enumerate(batches):
        token = {"insert_deduplication_token": f"ceiling-{native}-{n}"}
        if native:
            await store.insert(
                "reports",
                data,
                REPORT_COLUMN_NAMES,
                column_oriented=True,
                column_types=REPORT_COLUMN_TYPES,
                settings=token,
            )
        else:
            await store.insert_arrow("reports", data, settings=token)
    return time.perf_counter() - started, time.process_time() - cpu_started


async def warm_up(settings: Settings, records: list[Record]) -> None:
    """The engine's first insert in a process costs ~0.4 s more (chDB loads what inserts and
    the views need), once: startup, not throughput. Both timed runs start warm, neither pays it
    (the ceiling, run second, would otherwise be spared it while the consumer was not)."""
    scratch = settings.model_copy(
        update={"clickhouse_database": f"{settings.clickhouse_database}_warm"}
    )
    scratch_store = Store.from_settings(scratch)
    await scratch_store.migrate(scratch)
    tables = ceiling_tables(scratch, [encode_batch(records[:1000])], 1000)
    await run_ceiling(scratch_store, tables, native=False)
    await run_ceiling(scratch_store, tables, native=True)
    await scratch_store.command("DROP DATABASE IF EXISTS {db}")
    await scratch_store.close()


def main(args: argparse.Namespace) -> int:
    """Starts a broker first when none is given (its readiness probe runs its own event loop),
    then measures."""
    work = Path(tempfile.mkdtemp(prefix="pinwatch-bench-"))
    try:
        say = None if args.bootstrap else lambda line: print(f"no --bootstrap: {line}", flush=True)
        with scratch_broker(work / "broker", bootstrap=args.bootstrap, say=say) as bootstrap:
            asyncio.run(measure(args, bootstrap, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


async def measure(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    ca = CertificateAuthority.load(work / "pki", host=HOST)
    policy = work / "policy.yaml"
    write_policy(ca, policy)
    roots = work / "roots.pem"
    roots.write_bytes(ca.public_roots_pem())
    suffix = uuid.uuid4().hex[:8]
    tuning = {"batch_max_rows": args.batch_max_rows, "batch_max_bytes": args.batch_max_bytes}
    settings = Settings(
        kafka_bootstrap=bootstrap,
        kafka_topic=f"bench-{suffix}",
        kafka_dead_letter_topic=f"bench-dl-{suffix}",
        kafka_consumer_group=f"bench-{suffix}",
        kafka_partitions=args.partitions,
        clickhouse_dsn=args.dsn or f"chdb:///{work / 'chdb'}",
        clickhouse_database=f"bench_{suffix}",
        policy_file=policy,
        public_roots_file=roots,
        data_dir=work,
        log_level="WARNING",
        **{k: v for k, v in tuning.items() if v is not None},
    )
    stores = {
        name: Store.from_settings(
            settings.model_copy(update={"clickhouse_database": f"{name}_{suffix}"})
        )
        for name in ("bench", "arrow", "native")
    }
    for store in stores.values():
        await store.migrate(settings.model_copy(update={"clickhouse_database": store.database}))
    store = stores["bench"]
    await ensure_topics(settings)

    print(f"generating {args.reports:,} reports ...", flush=True)
    records = make_records(ca, args.reports)
    values = [encode_batch(records[i : i + args.batch]) for i in range(0, len(records), args.batch)]
    print(
        f"producing them to Kafka ({args.batch} per message, "
        f"{sum(map(len, values)) / len(records):.0f} bytes a report) ...",
        flush=True,
    )
    ends = await produce(settings, values)
    await warm_up(settings, records)
    tables = ceiling_tables(settings, values, settings.batch_max_rows)

    print("consumer: Kafka -> decode -> classify -> ClickHouse -> commit ...", flush=True)
    consumer_s, consumer_cpu, pieces = await run_consumer(settings, store, args.reports, ends)
    print("ceiling: bare clickhouse-connect inserts of the same rows (Arrow, Native) ...")
    ceilings = {
        "arrow": await run_ceiling(stores["arrow"], tables, native=False),
        "native": await run_ceiling(stores["native"], tables, native=True),
    }
    stored = await store.scalar("SELECT count() FROM {db}.reports")
    assert stored == args.reports, f"consumer stored {stored} rows, sent {args.reports}"

    n = args.reports
    best = min(ceilings, key=lambda k: ceilings[k][0])
    ceiling_s, ceiling_cpu = ceilings[best]
    print()
    print(f"reports                      {n:>10,}")
    print("                             wall clock reports/s     per CPU-second (this process)")
    print(
        f"consumer                     {n / consumer_s:>10,.0f} ({consumer_s:5.2f}s)    "
        f"{n / consumer_cpu:>10,.0f}"
    )
    for name, (wall, cpu) in ceilings.items():
        print(f"bare insert, {name:<16}{n / wall:>10,.0f} ({wall:5.2f}s)    {n / cpu:>10,.0f}")
    print(
        f"ratio consumer/{best:<14}{ceiling_s / consumer_s:>10.2f}"
        f"                {ceiling_cpu / consumer_cpu:>10.2f}   (goal: 0.75 both)"
    )
    print()
    print("where a report's microseconds go (consumer; fetch to classify: CPU of the event")
    print("loop's thread; lookup and insert: wall clock on the ClickHouse thread)")
    for piece in PIECES:
        print(f"  {piece:<10}{pieces.get(piece, 0.0):6.2f} us")
    print(f"  {'loop':<10}{pieces['event loop']:6.2f} us CPU of the event loop's thread in all")
    print(f"  {'process':<10}{consumer_cpu / n * 1e6:6.2f} us CPU a report in all")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (consumer, ceilings, generated reports): {rss:,.0f} MiB")
    for s in stores.values():
        await s.command("DROP DATABASE IF EXISTS {db}")
        await s.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Consumer throughput (Kafka -> ClickHouse, reports/s per process) next to a "
        "bare clickhouse-connect insert of the same rows; prints the ratio."
    )
    parser.add_argument("--reports", type=int, default=300_000, help="reports to send (300000)")
    parser.add_argument("--batch", type=int, default=1000, help="reports per Kafka message")
    parser.add_argument(
        "--batch-max-rows", type=int, default=None, help="consumer setting (default: settings')"
    )
    parser.add_argument(
        "--batch-max-bytes", type=int, default=None, help="consumer setting (default: settings')"
    )
    parser.add_argument("--partitions", type=int, default=2, help="partitions of the topic")
    parser.add_argument(
        "--bootstrap",
        default="",
        help="Kafka bootstrap servers (default: start a local broker for the run)",
    )
    parser.add_argument("--dsn", default="", help="ClickHouse DSN (default: a fresh chDB dir)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
