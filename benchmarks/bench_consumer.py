"""Consumer throughput: reports/s per process from Kafka into ClickHouse, against the ceiling.

1. Produces N reports (native-format records, batches of --batch reports per Kafka message,
   a realistic mix: successes and failures with real chains, network errors) to a fresh topic.
2. Runs the real consumer (one process, this one) until every report is inserted and
   committed: reports/s. Once it has handled the last message it is asked to stop, which
   inserts and commits at once (the batch-age and commit-interval timers are the stream end's
   latency, not throughput).
3. The ceiling, in the same run: a bare clickhouse-connect insert of the very same rows (same
   schema, views included, same batch size, Native with the column types given) with no Kafka,
   decoding, classification or retry lookup.
4. Prints both and their ratio.

    timeout 900 .venv/bin/python benchmarks/bench_consumer.py   # 300k reports, ~2 minutes
    .venv/bin/python benchmarks/bench_consumer.py --reports 500000

Measured on the shared 2-core machine (runs taking turns): at commit f0cb38e 15,200-17,600
reports/s (100k reports, cold engine; ratio 0.12-0.17); at 3c1704c 37,000-46,800 (100k, cold
engine), 42,300-56,000 with this script's warm engine and 300k reports; with 50,000-row batches
48,700-62,300 (ceiling 124,000-141,000, ratio 0.37-0.50). benchmarks/README.md says what
bounds it.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumers.classify import Classifier, report_columns  # noqa: E402
from consumers.cli import tune_gc  # noqa: E402
from consumers.consumer import Consumer  # noqa: E402
from consumers.decode import decode  # noqa: E402
from consumers.schema import REPORT_COLUMN_NAMES, REPORT_COLUMN_TYPES  # noqa: E402
from consumers.store import Store  # noqa: E402
from devstack.certs import CertificateAuthority  # noqa: E402
from pinwatch.kafka import client_args  # noqa: E402
from pinwatch.policy import load_policy  # noqa: E402
from pinwatch.record import Record, encode_batch  # noqa: E402
from pinwatch.roots import PublicRoots  # noqa: E402
from pinwatch.settings import Settings  # noqa: E402
from pinwatch.topics import ensure_topics  # noqa: E402
from pinwatch.vocabulary import ErrorCategory, Format, Kind, Result

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


async def produce(
    settings: Settings, records: list[Record], per_message: int
) -> dict[tuple[str, int], int]:
    """Sends the records; returns the end offset of each partition written."""
    producer = AIOKafkaProducer(
        **client_args(settings),
        acks="all",
        max_request_size=8 * 1024 * 1024,
        linger_ms=5,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(settings.kafka_topic, encode_batch(records[i : i + per_message]))
            for i in range(0, len(records), per_message)
        ]
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
) -> tuple[float, float]:
    """Until every report is inserted and committed. Once the consumer has handled the last
    message of every partition it is asked to stop, which inserts its open batch and commits at
    once: otherwise the run's end would wait out `batch_max_seconds` and
    `commit_interval_seconds` (up to 2 s of a few seconds' run), a latency of the stream's end,
    not throughput."""
    consumer = Consumer(settings, store)
    await consumer.start()
    tune_gc()  # as `pinwatch consume` does
    task = asyncio.create_task(consumer.run())
    # The clock starts once the group gave this consumer its partitions: joining a group takes
    # the broker's group.initial.rebalance.delay.ms, which is not throughput.
    for _ in range(6000):
        if consumer.assignment or task.done():
            break
        await asyncio.sleep(0.01)
    started, cpu_started = time.perf_counter(), time.process_time()
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
    try:
        while True:
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
    if committed() != total:
        raise RuntimeError(f"consumer committed {committed()} reports, sent {total}")
    return elapsed, cpu


async def run_ceiling(
    settings: Settings, store: Store, records: list[Record], rows: int
) -> tuple[float, float]:
    """The same rows, classified beforehand (not timed), inserted bare in batches of `rows`."""
    classifier = Classifier(
        load_policy(settings.policy_file), PublicRoots.load(settings.public_roots_file)
    )
    decoded, _ = decode(encode_batch(records))
    classes = [classifier.classify(r) for r in records]
    batches = [
        report_columns(
            decoded[i : i + rows],
            classes[i : i + rows],
            [(settings.kafka_topic, 0, n) for n in range(i, min(i + rows, len(decoded)))],
        )
        for i in range(0, len(decoded), rows)
    ]
    started, cpu_started = time.perf_counter(), time.process_time()
    for n, columns in enumerate(batches):
        await store.insert(
            "reports",
            columns,
            REPORT_COLUMN_NAMES,
            column_oriented=True,
            column_types=REPORT_COLUMN_TYPES,
            settings={"insert_deduplication_token": f"ceiling-{n}"},
        )
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
    await run_ceiling(scratch, scratch_store, records[:1000], 1000)
    await scratch_store.command("DROP DATABASE IF EXISTS {db}")
    await scratch_store.close()


async def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="pinwatch-bench-"))
    try:
        ca = CertificateAuthority.load(work / "pki", host=HOST)
        policy = work / "policy.yaml"
        write_policy(ca, policy)
        roots = work / "roots.pem"
        roots.write_bytes(ca.public_roots_pem())
        suffix = uuid.uuid4().hex[:8]
        tuning = {"batch_max_rows": args.batch_max_rows, "batch_max_bytes": args.batch_max_bytes}
        settings = Settings(
            kafka_bootstrap=args.bootstrap,
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
        ceiling_settings = settings.model_copy(update={"clickhouse_database": f"ceil_{suffix}"})
        store = Store.from_settings(settings)
        ceiling_store = Store.from_settings(ceiling_settings)
        await store.migrate(settings)
        await ceiling_store.migrate(ceiling_settings)
        await ensure_topics(settings)

        print(f"generating {args.reports:,} reports ...", flush=True)
        records = make_records(ca, args.reports)
        print(f"producing them to Kafka ({args.batch} per message) ...", flush=True)
        ends = await produce(settings, records, args.batch)
        await warm_up(settings, records)

        print("consumer: Kafka -> decode -> classify -> ClickHouse -> commit ...", flush=True)
        consumer_s, consumer_cpu = await run_consumer(settings, store, args.reports, ends)
        print("ceiling: bare clickhouse-connect insert of the same rows ...", flush=True)
        ceiling_s, ceiling_cpu = await run_ceiling(
            ceiling_settings, ceiling_store, records, settings.batch_max_rows
        )
        stored = await store.scalar("SELECT count() FROM {db}.reports")
        assert stored == args.reports, f"consumer stored {stored} rows, sent {args.reports}"

        n = args.reports
        consumer_rate, ceiling_rate = n / consumer_s, n / ceiling_s
        print()
        print(f"reports                 {n:>10,}")
        print("                        wall clock reports/s     per CPU-second (this process)")
        print(
            f"consumer                {consumer_rate:>10,.0f} ({consumer_s:5.2f}s)    "
            f"{n / consumer_cpu:>10,.0f}"
        )
        print(
            f"bare insert (ceiling)   {ceiling_rate:>10,.0f} ({ceiling_s:5.2f}s)    "
            f"{n / ceiling_cpu:>10,.0f}"
        )
        print(
            f"ratio consumer/ceiling  {consumer_rate / ceiling_rate:>10.2f}"
            f"             {ceiling_cpu / consumer_cpu:>10.2f}"
        )
        print(f"goal 100,000/s (wall)   {'met' if consumer_rate >= 100_000 else 'NOT met':>10}")
        print("(CPU-second rates are steadier than wall clock on a shared machine)")
        await store.command("DROP DATABASE IF EXISTS {db}")
        await ceiling_store.command("DROP DATABASE IF EXISTS {db}")
        await store.close()
        await ceiling_store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


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
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--dsn", default="", help="ClickHouse DSN (default: a fresh chDB dir)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
