"""Rollout dashboard cost: every ClickHouse panel over a 7-day range, as the dashboard runs it
(per-minute rollup and its uniq sketches where it can), against the baseline of the same
questions asked of the raw `reports` table, in the same run and the same chDB.

1. Migrates a fresh database and fills `reports` with N synthetic reports spread over 7 days
   (ClickHouse generates them with `numbers()`; the materialized views fill the rollup as in
   production): 2 hosts, 3 leaf pins, 40k devices, 200 networks, ~1 % failures.
2. Renders each panel's SQL as grafana-clickhouse-datasource would ("All" selected, last 7 days)
   and times it (best of --repeat).
3. Rewrites the rollup reads into the equivalent raw-table reads (uniq(device) for the sketch
   merge, received_at for minute) and times those too.
4. Prints per panel: rollup ms, raw ms, raw / rollup; and the whole dashboard.

    .venv/bin/python benchmarks/bench_dashboards.py                 # 1M reports
    .venv/bin/python benchmarks/bench_dashboards.py --reports 5000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import clickhouse_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumers.migrations import migrate  # noqa: E402
from dashboards.interpolate import Selection, clickhouse_sql  # noqa: E402
from pinwatch.settings import Settings  # noqa: E402

ROLLOUT = Path(__file__).resolve().parent.parent / "dashboards" / "json" / "pinwatch-rollout.json"
DB = "bench_dash"
DAYS = 7

FILL = """
INSERT INTO {db}.reports
SELECT
    toString(number) AS id,
    now64(3) - toIntervalSecond(number % {span}) AS received_at,
    NULL AS event_at, NULL AS sent_at,
    ['com.example.a', 'com.example.b'][number % 2 + 1] AS app_id,
    ['5.1.0', '5.2.0', '5.3.0'][number % 3 + 1] AS app_version,
    ['ios', 'android'][intDiv(number, 7) % 2 + 1] AS platform,
    '18.1' AS os_version,
    toString(cityHash64(number % 40000)) AS device,
    'wifi' AS network,
    concat('10.', toString(number % 200), '.0.0/16') AS client_network,
    ['api.bench.test', 'cdn.bench.test'][number % 2 + 1] AS host,
    host AS policy_host,
    443 AS port,
    if(number % 10 = 0, 'network_error', 'pin_validation') AS kind,
    'native' AS format,
    multiIf(kind = 'network_error', '', number % 97 = 0, 'pin_mismatch', 'ok') AS result,
    multiIf(kind = 'network_error', '', result = 'ok', if(number % 50 = 0, 'backup', 'primary'),
            'none') AS pin_match,
    toUInt8(host = 'api.bench.test') AS enforced,
    if(enforced = 1, 'enforce', 'report_only') AS phase,
    multiIf(result = 'ok' OR result = '', '', number % 2 = 0, 'rotation_suspected',
            'interception_suspected') AS cause,
    [leaf_pin] AS observed_pins,
    [] AS client_pins,
    1 AS client_pins_consistent,
    multiIf(kind = 'network_error', '', pin_match = 'primary', 'PRIMARYPIN',
            pin_match = 'backup', 'BACKUPPIN',
            concat('SURPRISE', toString(number % 3))) AS leaf_pin,
    toUInt8(cause != 'interception_suspected') AS chain_public_root,
    if(kind = 'network_error', 'timeout', '') AS error,
    '' AS detail,
    toUInt32(1 + number % 5) AS count,
    'bench' AS kafka_topic,
    toUInt32(number % 2) AS kafka_partition,
    number AS kafka_offset
FROM numbers({n})
"""


def raw_equivalent(sql: str) -> str:
    """The same question against `reports`: sketches merged -> uniq over the raw column."""
    return (
        sql.replace(f"{DB}.rollup_minute", f"{DB}.reports")
        .replace("uniqMergeIf(devices,", "uniqIf(device,")
        .replace("uniqMerge(devices)", "uniq(device)")
        .replace("uniqMerge(client_networks)", "uniq(client_network)")
        .replace("minute", "received_at")
    )


def best_ms(client, sql: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.query(sql)
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=1_000_000, help="synthetic reports")
    parser.add_argument("--repeat", type=int, default=3, help="runs per query (best is kept)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboards-"))
    try:
        client = clickhouse_connect.get_client(dsn=f"chdb:///{tmp}")
        migrate(client, Settings(clickhouse_database=DB, clickhouse_dsn=f"chdb:///{tmp}"))
        print(f"filling {args.reports:,} reports over {DAYS} days ...", flush=True)
        started = time.perf_counter()
        client.command(FILL.format(db=DB, n=args.reports, span=DAYS * 86400 - 60))
        rollup_rows = client.query(f"SELECT count() FROM {DB}.rollup_minute").result_rows[0][0]
        print(f"  {time.perf_counter() - started:.1f}s; rollup holds {rollup_rows:,} rows")

        model = json.loads(ROLLOUT.read_text())
        selection = Selection.from_dashboard(model, database=DB)
        end = datetime.now(UTC) + timedelta(minutes=1)
        start = end - timedelta(days=DAYS, minutes=2)
        total_rollup = total_raw = 0.0
        print(f"{'panel':<42} {'dashboard ms':>12} {'raw ms':>9} {'raw/dash':>9}")
        for panel in model["panels"]:
            for target in panel.get("targets", []):
                sql = clickhouse_sql(target["rawSql"], selection, start, end)
                dash = best_ms(client, sql, args.repeat)
                raw_sql = raw_equivalent(sql)
                raw = best_ms(client, raw_sql, args.repeat) if raw_sql != sql else dash
                total_rollup += dash
                total_raw += raw
                print(f"{panel['title'][:42]:<42} {dash:>12.1f} {raw:>9.1f} {raw / dash:>9.2f}")
        print(
            f"{'whole dashboard':<42} {total_rollup:>12.1f} {total_raw:>9.1f} "
            f"{total_raw / total_rollup:>9.2f}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
