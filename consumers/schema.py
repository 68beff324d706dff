"""The ClickHouse schema, as forward-only migrations applied by `pinwatch migrate`.

Tables (database `settings.clickhouse_database`):

- `reports`: one row per report as classified by the consumer. Partitioned by day, ordered by
  (host, received_at) for per-host time queries, TTL `settings.retention_days`.
- `rollup_minute`: per-minute sums of `count` and uniq sketches of `device` and
  `client_network`, kept by a materialized view on `reports`. Read with `sum(count)`,
  `uniqMerge(devices)`, `uniqMerge(client_networks)` and GROUP BY (parts merge lazily).
- `evidence`: sampled full chains (and raw payloads) per host, observed leaf pin and hour,
  written by the consumer (at most `settings.evidence_per_pin_hour` per key and process);
  `evidence_hourly` counts everything for the same keys (materialized view on `reports`).
- `kafka_progress`: highest Kafka offset stored per topic and partition (materialized view on
  `reports`); the consumer reads it on partition assignment so a batch inserted but not
  committed before a crash is never inserted twice (see the README's consumer section).
- `report_ids`: (app_id, id, received_at) of native and TrustKit reports, sorted by id
  (materialized view on `reports`), for the consumer's client-retry lookup.
- `schema_migrations`: which migration versions were applied, and when.

Every table that receives inserts has `non_replicated_deduplication_window`, and the consumer
inserts with `insert_deduplication_token` + `deduplicate_blocks_in_dependent_materialized_views`
so a retried insert is dropped by the raw table and by every view alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from consumers.rollout import rollups as rollout_rollups
from pinwatch.logs import event
from pinwatch.settings import Settings

log = logging.getLogger("pinwatch.schema")

# How many recent insert tokens each table remembers. A redelivered batch older than this many
# inserts would not be recognized; the consumer inserts about once a second, so 1000 is minutes.
DEDUP_WINDOW = 1000

REPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "String"),
    ("received_at", "DateTime64(3, 'UTC')"),
    ("event_at", "Nullable(DateTime64(3, 'UTC'))"),
    ("sent_at", "Nullable(DateTime64(3, 'UTC'))"),
    ("app_id", "LowCardinality(String)"),
    ("app_version", "LowCardinality(String)"),
    ("platform", "LowCardinality(String)"),
    ("os_version", "LowCardinality(String)"),
    ("device", "String"),
    ("network", "LowCardinality(String)"),
    ("client_network", "String"),
    ("host", "LowCardinality(String)"),
    ("policy_host", "LowCardinality(String)"),
    ("port", "UInt16"),
    ("kind", "LowCardinality(String)"),
    ("format", "LowCardinality(String)"),
    ("result", "LowCardinality(String)"),
    ("pin_match", "LowCardinality(String)"),
    ("enforced", "UInt8"),
    ("phase", "LowCardinality(String)"),
    ("cause", "LowCardinality(String)"),
    ("observed_pins", "Array(String)"),
    ("client_pins", "Array(String)"),
    ("client_pins_consistent", "UInt8"),
    ("leaf_pin", "String"),
    ("chain_public_root", "UInt8"),
    ("error", "LowCardinality(String)"),
    ("detail", "String"),
    ("count", "UInt32"),
    ("kafka_topic", "LowCardinality(String)"),
    ("kafka_partition", "UInt32"),
    ("kafka_offset", "UInt64"),
)
REPORT_COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in REPORT_COLUMNS)
REPORT_COLUMN_TYPES: tuple[str, ...] = tuple(kind for _, kind in REPORT_COLUMNS)

EVIDENCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("hour", "DateTime('UTC')"),
    ("host", "LowCardinality(String)"),
    ("leaf_pin", "String"),
    ("report_id", "String"),
    ("received_at", "DateTime64(3, 'UTC')"),
    ("app_id", "LowCardinality(String)"),
    ("app_version", "LowCardinality(String)"),
    ("platform", "LowCardinality(String)"),
    ("format", "LowCardinality(String)"),
    ("result", "LowCardinality(String)"),
    ("pin_match", "LowCardinality(String)"),
    ("cause", "LowCardinality(String)"),
    ("client_network", "String"),
    ("observed_pins", "Array(String)"),
    ("served_chain", "Array(String)"),
    ("raw", "String"),
)
EVIDENCE_COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in EVIDENCE_COLUMNS)
EVIDENCE_COLUMN_TYPES: tuple[str, ...] = tuple(kind for _, kind in EVIDENCE_COLUMNS)

# Dimensions of the per-minute rollup, in sort-key order (most selective for per-host reads first).
ROLLUP_DIMENSIONS: tuple[str, ...] = (
    "host",
    "app_id",
    "kind",
    "result",
    "pin_match",
    "enforced",
    "cause",
    "error",
    "leaf_pin",
    "app_version",
    "platform",
    "policy_host",
    "phase",
)


def _columns(columns: tuple[tuple[str, str], ...]) -> str:
    return ",\n    ".join(f"`{name}` {kind}" for name, kind in columns)


_DEDUP = f"non_replicated_deduplication_window = {DEDUP_WINDOW}"

# Formats whose report id tells one device's report from another's: the native id is the
# client's own, TrustKit's is derived from content that includes the (hashed) vendor id. NEL and
# HPKP carry no device identity, so two devices on one network sending the same report in the
# same minute get the same derived id: deduplicating those would drop real events, so they are
# deduplicated by Kafka offset only (a lost 202 followed by a browser retry can count twice).
# Migration 3 bakes this list into the `report_ids` view: changing it takes a new migration.
ID_DEDUP_FORMATS = frozenset({"native", "trustkit"})
_ID_DEDUP_FORMATS_SQL = ", ".join(f"'{f}'" for f in sorted(ID_DEDUP_FORMATS))


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]  # formatted with db= and ttl_days=


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "reports, rollups, evidence, kafka progress",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.reports (
    {_columns(REPORT_COLUMNS)}
) ENGINE = MergeTree
PARTITION BY toDate(received_at)
ORDER BY (host, received_at)
TTL toDateTime(received_at) + INTERVAL {{ttl_days}} DAY
SETTINGS {_DEDUP}, ttl_only_drop_parts = 1""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.rollup_minute (
    `minute` DateTime('UTC'),
    `host` LowCardinality(String),
    `app_id` LowCardinality(String),
    `kind` LowCardinality(String),
    `result` LowCardinality(String),
    `pin_match` LowCardinality(String),
    `enforced` UInt8,
    `cause` LowCardinality(String),
    `error` LowCardinality(String),
    `leaf_pin` String,
    `app_version` LowCardinality(String),
    `platform` LowCardinality(String),
    `policy_host` LowCardinality(String),
    `phase` LowCardinality(String),
    `count` SimpleAggregateFunction(sum, UInt64),
    `devices` AggregateFunction(uniq, String),
    `client_networks` AggregateFunction(uniq, String)
) ENGINE = AggregatingMergeTree
PARTITION BY toDate(minute)
ORDER BY (host, minute, {", ".join(ROLLUP_DIMENSIONS[1:])})
TTL minute + INTERVAL {{ttl_days}} DAY
SETTINGS {_DEDUP}, ttl_only_drop_parts = 1""",
            f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.rollup_minute_mv
TO {{db}}.rollup_minute AS
SELECT
    toStartOfMinute(toDateTime(received_at)) AS minute,
    {", ".join(ROLLUP_DIMENSIONS)},
    sum(count) AS count,
    uniqState(device) AS devices,
    uniqState(client_network) AS client_networks
FROM {{db}}.reports
GROUP BY minute, {", ".join(ROLLUP_DIMENSIONS)}""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.evidence (
    {_columns(EVIDENCE_COLUMNS)}
) ENGINE = ReplacingMergeTree
PARTITION BY toDate(hour)
ORDER BY (host, leaf_pin, hour, report_id)
TTL hour + INTERVAL {{ttl_days}} DAY
SETTINGS {_DEDUP}, ttl_only_drop_parts = 1""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.evidence_hourly (
    `hour` DateTime('UTC'),
    `host` LowCardinality(String),
    `leaf_pin` String,
    `kind` LowCardinality(String),
    `result` LowCardinality(String),
    `cause` LowCardinality(String),
    `count` SimpleAggregateFunction(sum, UInt64),
    `reports` SimpleAggregateFunction(sum, UInt64),
    `devices` AggregateFunction(uniq, String),
    `client_networks` AggregateFunction(uniq, String),
    `first_seen` SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    `last_seen` SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
) ENGINE = AggregatingMergeTree
PARTITION BY toDate(hour)
ORDER BY (host, leaf_pin, hour, kind, result, cause)
TTL hour + INTERVAL {{ttl_days}} DAY
SETTINGS {_DEDUP}, ttl_only_drop_parts = 1""",
            """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.evidence_hourly_mv
TO {db}.evidence_hourly AS
SELECT
    toStartOfHour(toDateTime(received_at)) AS hour,
    host, leaf_pin, kind, result, cause,
    sum(count) AS count,
    count() AS reports,
    uniqState(device) AS devices,
    uniqState(client_network) AS client_networks,
    min(received_at) AS first_seen,
    max(received_at) AS last_seen
FROM {db}.reports
GROUP BY hour, host, leaf_pin, kind, result, cause""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.kafka_progress (
    `kafka_topic` LowCardinality(String),
    `kafka_partition` UInt32,
    `max_offset` SimpleAggregateFunction(max, UInt64)
) ENGINE = AggregatingMergeTree
ORDER BY (kafka_topic, kafka_partition)
SETTINGS {_DEDUP}""",
            """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.kafka_progress_mv
TO {db}.kafka_progress AS
SELECT kafka_topic, kafka_partition, max(kafka_offset) AS max_offset
FROM {db}.reports
GROUP BY kafka_topic, kafka_partition""",
        ),
    ),
    # Rollout analysis (consumers/rollout/rollups.py): hourly rollups with mergeable sketches.
    Migration(
        2,
        "rollout hourly rollups",
        tuple(s.replace("{dedup}", _DEDUP) for s in rollout_rollups.STATEMENTS),
    ),
    # The retry lookup (consumers/steps.py RecentIds) asks "which of these ids are stored?";
    # `reports` is sorted by (host, received_at), so that read the window's whole `id` column.
    # Sorted by (app_id, id), the same question reads one small granule per id. A bloom-filter
    # index on reports.id would not do: a lookup carries thousands of ids, and a granule whose
    # filter matches any one of them is read, which is nearly every granule.
    Migration(
        3,
        "report ids for the retry lookup",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.report_ids (
    `app_id` LowCardinality(String),
    `id` String,
    `received_at` DateTime64(3, 'UTC')
) ENGINE = MergeTree
PARTITION BY toDate(received_at)
ORDER BY (app_id, id)
TTL toDateTime(received_at) + INTERVAL {{ttl_days}} DAY
SETTINGS {_DEDUP}, ttl_only_drop_parts = 1, index_granularity = 256""",
            f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.report_ids_mv
TO {{db}}.report_ids AS
SELECT app_id, id, received_at FROM {{db}}.reports
WHERE format IN ({_ID_DEDUP_FORMATS_SQL})""",
            # Ids stored before this migration, within the dedup window (the view is created
            # first: a row inserted meanwhile is copied twice, which a lookup does not mind).
            f"""INSERT INTO {{db}}.report_ids SELECT app_id, id, received_at FROM {{db}}.reports
WHERE format IN ({_ID_DEDUP_FORMATS_SQL})
AND received_at >= now64(3) - toIntervalSecond({{dedup_seconds}})""",
        ),
    ),
)

# Tables whose TTL follows settings.retention_days; re-applied on every migrate run so a changed
# setting takes effect without a new migration.
_TTL_TABLES: dict[str, str] = {
    "reports": "toDateTime(received_at)",
    "rollup_minute": "minute",
    "evidence": "hour",
    "evidence_hourly": "hour",
    "report_ids": "toDateTime(received_at)",
    **rollout_rollups.TTL_TABLES,
}


class MigrationError(RuntimeError):
    pass


def _database(settings: Settings) -> str:
    db = settings.clickhouse_database
    if not db.replace("_", "").isalnum():
        raise MigrationError(f"clickhouse_database must be letters, digits and _: {db!r}")
    return db


def pending(client: object, settings: Settings) -> list[int]:
    """Versions of MIGRATIONS not yet recorded as applied (all of them before the first
    `migrate`); reads only, so a process without DDL rights can wait on it."""
    db = _database(settings)
    query = client.query  # type: ignore[attr-defined]
    exists = query(
        "SELECT count() FROM system.tables WHERE database = {db:String} "
        "AND name = 'schema_migrations'",
        parameters={"db": db},
    ).result_rows[0][0]
    done = set()
    if exists:
        done = {row[0] for row in query(f"SELECT version FROM {db}.schema_migrations").result_rows}
    return [m.version for m in MIGRATIONS if m.version not in done]


def migrate(client: object, settings: Settings) -> list[int]:
    """Apply every migration not yet recorded; returns the versions applied now.

    `client` is a clickhouse-connect client (sync); `consumers.store.Store.migrate` calls this
    off the event loop. Statements are `IF NOT EXISTS`, so a migration interrupted halfway is
    simply re-run.
    """
    db = _database(settings)
    command = client.command  # type: ignore[attr-defined]
    query = client.query  # type: ignore[attr-defined]
    command(f"CREATE DATABASE IF NOT EXISTS {db}")
    command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime('UTC') DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version"
    )
    done = {row[0] for row in query(f"SELECT version FROM {db}.schema_migrations").result_rows}
    applied: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            try:
                command(
                    statement.format(
                        db=db,
                        ttl_days=settings.retention_days,
                        dedup_seconds=int(settings.dedup_window_seconds),
                    )
                )
            except Exception as exc:  # noqa: BLE001 - name the step that failed, keep the cause
                raise MigrationError(
                    f"migration {migration.version} ({migration.name}) failed: {exc}"
                ) from exc
        command(
            f"INSERT INTO {db}.schema_migrations (version, name) VALUES "
            f"({migration.version}, '{migration.name}')"
        )
        applied.append(migration.version)
        event(log, "migration_applied", version=migration.version, title=migration.name)
    engines = dict(
        query(
            "SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
            parameters={"db": db},
        ).result_rows
    )
    for table, expr in _TTL_TABLES.items():
        # Only when it changed: MODIFY TTL rewrites parts, which is costly on a big table.
        if f"toIntervalDay({settings.retention_days})" not in engines.get(table, ""):
            command(
                f"ALTER TABLE {db}.{table} MODIFY TTL {expr} "
                f"+ INTERVAL {settings.retention_days} DAY"
            )
            event(log, "ttl_changed", table=table, days=settings.retention_days)
    return applied
