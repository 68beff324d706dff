"""Storage a fleet's day of reports takes, per table, and the bytes a record takes on Kafka: the
inputs of docs/scaling.md's storage and Kafka columns.

Generates one day of reports for `--devices` installed devices inside chDB, through the real
schema (`pinwatch migrate`'s migrations; the materialized views fill the rollups exactly as the
consumer's inserts do), merges every table as ClickHouse's background merges eventually do
(`OPTIMIZE ... FINAL`), and reads each table's rows and compressed bytes from `system.parts`.
The baseline in the same run is the uncompressed size of the same data: the ratio is the
compression. Run it at two fleet sizes to see which tables grow with the fleet (`reports`,
`report_ids`, the per-network rollup) and which are bounded by the policy's dimensions (the
minute and hourly rollups, whose distinct-device sketches stop growing at a cap).

The traffic, per installed device and day (docs/scaling.md states the same assumptions): half
the devices are active; an active device sends 12 native batches (one per 10 minutes of use,
2 hours a day) of 3 lines each: a success line per pinned host (2 hosts, aggregated with
`count`) and one network-error line. 0.2 % of client networks intercept TLS (a proxy's chain,
`pin_mismatch`). Devices live on `devices / 5` client /24s, 5 app versions, 2 platforms.
Report ids are UUIDs and device hashes 32 hex characters, as in production.

    .venv/bin/python benchmarks/bench_storage.py                   # 100,000 devices, a minute
    .venv/bin/python benchmarks/bench_storage.py --devices 1000000 # 18 M reports, minutes
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from aiokafka.codec import gzip_encode, lz4_encode, zstd_encode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumers.store import Store  # noqa: E402
from devstack.certs import CertificateAuthority  # noqa: E402
from pinwatch.record import Record, encode_batch, encode_json  # noqa: E402
from pinwatch.settings import Settings  # noqa: E402
from pinwatch.vocabulary import ErrorCategory, Format, Kind, Result  # noqa: E402

ACTIVE_SHARE = 0.5
BATCHES_PER_ACTIVE_DAY = 12
LINES_PER_BATCH = 3
HOSTS = ("api.bench.test", "cdn.bench.test")


def insert_sql(db: str, start: int, rows: int, devices: int, day_start_ms: int) -> str:
    """Report lines numbered from `start`: line i belongs to active device i // 36, batch
    (i // 3) % 12, line i % 3 (0, 1: a host's successes; 2: a network error)."""
    networks = max(1, devices // 5)
    per_device = BATCHES_PER_ACTIVE_DAY * LINES_PER_BATCH
    return f"""
INSERT INTO {db}.reports (id, received_at, app_id, app_version, platform, os_version, device,
    network, client_network, host, policy_host, port, kind, format, result, pin_match,
    enforced, phase, cause, observed_pins, leaf_pin, chain_public_root, error, detail, count,
    kafka_topic, kafka_partition, kafka_offset)
SELECT
    toString(generateUUIDv4(number)) AS id,
    fromUnixTimestamp64Milli(toInt64({day_start_ms} + cityHash64(d, b) % 86400000)) AS received_at,
    'com.bench.app',
    ['4.9.0', '5.0.0', '5.1.0', '5.2.0', '5.3.0'][1 + (d % 5)],
    if(d % 2 = 0, 'ios', 'android'),
    ['17.6', '18.0', '18.1', '14', '15'][1 + (d % 5)],
    lower(hex(sipHash128(d))) AS device,
    if(d % 3 = 0, 'cellular', 'wifi'),
    concat('10.', toString(intDiv(n, 65536) % 256), '.', toString(intDiv(n, 256) % 256), '.',
           toString(n % 256), '.0/24') AS client_network,
    ['{HOSTS[0]}', '{HOSTS[1]}', '{HOSTS[0]}'][line + 1] AS host,
    host, 443,
    if(line = 2, 'network_error', 'pin_validation') AS kind,
    'native',
    multiIf(line = 2, '', proxy, 'pin_mismatch', 'ok'),
    multiIf(line = 2, '', proxy, 'none', 'primary'),
    1, 'enforce',
    if(line != 2 AND proxy, 'interception_suspected', ''),
    if(line = 2, [], if(proxy, ['proxyleafpinproxyleafpinproxyleafpinproxy0=',
        'proxyrootpinproxyrootpinproxyrootpinproxy00='],
        ['primaryleafpinprimaryleafpinprimaryleafpi0=',
         'intermediatepinintermediatepinintermediat0=',
         'rootpinrootpinrootpinrootpinrootpinrootp0=']))
        AS observed_pins,
    if(empty(observed_pins), '', observed_pins[1]),
    line != 2 AND NOT proxy,
    if(line = 2, ['timeout', 'dns', 'tcp', 'tls'][1 + (b % 4)], ''),
    if(line = 2, 'NSURLErrorTimedOut', ''),
    if(line = 2, 1 + b % 3, 10 + cityHash64(d, b, line) % 30),
    'pinwatch.reports', d % 12, number
FROM (
    SELECT number, d, b, line, n, n % 500 = 7 AS proxy
    FROM (
        SELECT number,
               intDiv(number, {per_device}) AS d,
               intDiv(number, {LINES_PER_BATCH}) % {BATCHES_PER_ACTIVE_DAY} AS b,
               number % {LINES_PER_BATCH} AS line,
               cityHash64(intDiv(number, {per_device})) % {networks} AS n
        FROM numbers({start}, {rows})
    )
)"""


async def generate(store: Store, db: str, devices: int) -> int:
    active = int(devices * ACTIVE_SHARE)
    total = active * BATCHES_PER_ACTIVE_DAY * LINES_PER_BATCH
    day_start_ms = (int(time.time()) // 86400 - 1) * 86_400_000
    chunk, done = 3_000_000, 0
    while done < total:
        n = min(chunk, total - done)
        await store.command(insert_sql(db, done, n, active, day_start_ms))
        done += n
        print(f"\r  generated {done:>12,} / {total:,} report lines", end="", file=sys.stderr)
    print(file=sys.stderr)
    return total


TABLES = (
    "reports",
    "report_ids",
    "rollup_minute",
    "evidence_hourly",
    "rollout_hourly",
    "rollout_network_hourly",
    "kafka_progress",
)


async def sizes(store: Store, db: str) -> dict[str, tuple[int, int, int]]:
    """table -> (rows, compressed bytes, uncompressed bytes) after merging."""
    for table in TABLES:
        await store.command(f"OPTIMIZE TABLE {db}.{table} FINAL")
    rows = await store.query(
        "SELECT table, sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes) "
        f"FROM system.parts WHERE database = '{db}' AND active GROUP BY table"
    )
    return {str(t): (int(r), int(c), int(u)) for t, r, c, u in rows}


def kafka_sizes() -> dict[str, int]:
    """Encoded bytes of one record of each kind, as ingest puts it on Kafka, and per line of a
    many-device message, compressed as `PINWATCH_KAFKA_COMPRESSION` would (with the CPU that
    costs ingest, in microseconds a line, next to the none baseline)."""
    with tempfile.TemporaryDirectory(prefix="pinwatch-bench-pki-") as pki:
        ca = CertificateAuthority.load(Path(pki))
        primary, proxy = ca.chain("primary"), ca.intercepted_chain()
    common = dict(
        id="7b7c3f2e-4d1a-4f7e-9a51-0c7d2b9e1f00",
        format=Format.NATIVE,
        app_id="com.bench.app",
        host=HOSTS[0],
        received_at_ms=1_764_324_000_000,
        event_at_ms=1_764_323_998_000,
        sent_at_ms=1_764_323_999_000,
        app_version="5.2.0",
        platform="ios",
        os_version="18.1",
        device="0123456789abcdef0123456789abcdef",
        network="wifi",
        client_network="203.0.113.0/24",
    )
    shapes = {
        "success line (3 pins)": Record(
            kind=Kind.PIN_VALIDATION,
            result=Result.OK,
            enforced=True,
            observed_pins=primary.pins,
            count=20,
            **common,  # type: ignore[arg-type]
        ),
        "network error line": Record(
            kind=Kind.NETWORK_ERROR,
            error=ErrorCategory.TIMEOUT,
            detail="NSURLErrorTimedOut",
            count=2,
            **common,  # type: ignore[arg-type]
        ),
        "failure with its served chain": Record(
            kind=Kind.PIN_VALIDATION,
            result=Result.PIN_MISMATCH,
            enforced=True,
            observed_pins=proxy.pins,
            served_chain=proxy.b64,
            **common,  # type: ignore[arg-type]
        ),
    }
    out = {name: len(encode_json(record)) for name, record in shapes.items()}
    out["message envelope (overhead)"] = len(encode_batch([]))
    # A message as ingest's group commit makes it under load: many devices' lines, each id and
    # device hash unique (what compression cannot shrink).
    lines = []
    for i in range(300):
        shape = shapes["network error line" if i % 3 == 2 else "success line (3 pins)"]
        lines.append(replace(shape, id=str(uuid.uuid4()), device=f"{uuid.uuid4().hex}"))
    message = encode_batch(lines)
    per = len(lines)
    out["  in a message of 300 lines, none"] = len(message) // per
    for name, encode in (("lz4", lz4_encode), ("zstd", zstd_encode), ("gzip", gzip_encode)):
        out[f"  in a message of 300 lines, {name}"] = len(encode(message)) // per
        started, rounds = time.perf_counter(), 50
        for _ in range(rounds):
            encode(message)
        micros = (time.perf_counter() - started) / rounds / per * 1e6
        out[f"    {name}: CPU a line, ns"] = round(micros * 1000)
    return out


async def main(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="pinwatch-bench-storage-"))
    settings = Settings(
        clickhouse_dsn=f"chdb:///{data_dir}",
        clickhouse_database="bench_storage",
        log_level="WARNING",
    )
    store = Store.from_settings(settings)
    db = settings.clickhouse_database
    try:
        await store.migrate(settings)
        started = time.perf_counter()
        reports = await generate(store, db, args.devices)
        generated = time.perf_counter() - started
        measured = await sizes(store, db)
    finally:
        await store.close()
        shutil.rmtree(data_dir, ignore_errors=True)

    print(
        f"{args.devices:,} installed devices, one day: {reports:,} report lines "
        f"(generated in {generated:.0f}s)"
    )
    print(
        f"{'table':<24}{'rows':>14}{'compressed':>14}{'bytes/report':>14}"
        f"{'bytes/device':>14}{'compression':>13}"
    )
    total = 0
    for table in TABLES:
        rows, compressed, uncompressed = measured.get(table, (0, 0, 0))
        total += compressed
        ratio = uncompressed / compressed if compressed else 0.0
        print(
            f"{table:<24}{rows:>14,}{compressed:>14,}{compressed / reports:>14.1f}"
            f"{compressed / args.devices:>14.1f}{ratio:>12.1f}x"
        )
    per_report, per_device = total / reports, total / args.devices
    print(f"{'all tables':<24}{'':>14}{total:>14,}{per_report:>14.1f}{per_device:>14.1f}")
    print("\non Kafka, bytes per record (compact JSON, before any compression):")
    for name, size in kafka_sizes().items():
        print(f"  {name:<32}{size:>6,}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000, help="installed devices (100,000)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
