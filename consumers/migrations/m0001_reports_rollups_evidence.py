"""Migration 1: the raw `reports` table and what materialized views keep from it: per-minute
rollups with distinct-device sketches, sampled `evidence` and its hourly counts, and the highest
Kafka offset stored per partition (`kafka_progress`, read on partition assignment so a batch
inserted but not committed before a crash is never inserted twice).

Frozen: written once and never edited (a change is a new migration). Statements are
formatted with `db`, `ttl_days` and `dedup_seconds`.
"""

VERSION = 1
NAME = "reports, rollups, evidence, kafka progress"

STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS {db}.reports (
    `id` String,
    `received_at` DateTime64(3, 'UTC'),
    `event_at` Nullable(DateTime64(3, 'UTC')),
    `sent_at` Nullable(DateTime64(3, 'UTC')),
    `app_id` LowCardinality(String),
    `app_version` LowCardinality(String),
    `platform` LowCardinality(String),
    `os_version` LowCardinality(String),
    `device` String,
    `network` LowCardinality(String),
    `client_network` String,
    `host` LowCardinality(String),
    `policy_host` LowCardinality(String),
    `port` UInt16,
    `kind` LowCardinality(String),
    `format` LowCardinality(String),
    `result` LowCardinality(String),
    `pin_match` LowCardinality(String),
    `enforced` UInt8,
    `phase` LowCardinality(String),
    `cause` LowCardinality(String),
    `observed_pins` Array(String),
    `client_pins` Array(String),
    `client_pins_consistent` UInt8,
    `leaf_pin` String,
    `chain_public_root` UInt8,
    `error` LowCardinality(String),
    `detail` String,
    `count` UInt32,
    `kafka_topic` LowCardinality(String),
    `kafka_partition` UInt32,
    `kafka_offset` UInt64
) ENGINE = MergeTree
PARTITION BY toDate(received_at)
ORDER BY (host, received_at)
TTL toDateTime(received_at) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1""",
    """CREATE TABLE IF NOT EXISTS {db}.rollup_minute (
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
ORDER BY (host, minute, app_id, kind, result, pin_match, enforced, cause, error, leaf_pin,
    app_version, platform, policy_host, phase)
TTL minute + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rollup_minute_mv
TO {db}.rollup_minute AS
SELECT
    toStartOfMinute(toDateTime(received_at)) AS minute,
    host, app_id, kind, result, pin_match, enforced, cause, error, leaf_pin,
    app_version, platform, policy_host, phase,
    sum(count) AS count,
    uniqState(device) AS devices,
    uniqState(client_network) AS client_networks
FROM {db}.reports
GROUP BY minute, host, app_id, kind, result, pin_match, enforced, cause, error, leaf_pin,
    app_version, platform, policy_host, phase""",
    """CREATE TABLE IF NOT EXISTS {db}.evidence (
    `hour` DateTime('UTC'),
    `host` LowCardinality(String),
    `leaf_pin` String,
    `report_id` String,
    `received_at` DateTime64(3, 'UTC'),
    `app_id` LowCardinality(String),
    `app_version` LowCardinality(String),
    `platform` LowCardinality(String),
    `format` LowCardinality(String),
    `result` LowCardinality(String),
    `pin_match` LowCardinality(String),
    `cause` LowCardinality(String),
    `client_network` String,
    `observed_pins` Array(String),
    `served_chain` Array(String),
    `raw` String
) ENGINE = ReplacingMergeTree
PARTITION BY toDate(hour)
ORDER BY (host, leaf_pin, hour, report_id)
TTL hour + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1""",
    """CREATE TABLE IF NOT EXISTS {db}.evidence_hourly (
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
TTL hour + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1""",
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
    """CREATE TABLE IF NOT EXISTS {db}.kafka_progress (
    `kafka_topic` LowCardinality(String),
    `kafka_partition` UInt32,
    `max_offset` SimpleAggregateFunction(max, UInt64)
) ENGINE = AggregatingMergeTree
ORDER BY (kafka_topic, kafka_partition)
SETTINGS non_replicated_deduplication_window = 1000""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.kafka_progress_mv
TO {db}.kafka_progress AS
SELECT kafka_topic, kafka_partition, max(kafka_offset) AS max_offset
FROM {db}.reports
GROUP BY kafka_topic, kafka_partition""",
)
