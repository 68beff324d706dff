"""Migration 2: the rollout's hourly rollups (`pinwatch rollout`, the Rollout dashboard).

Why not `rollup_minute`: distinct devices over a week are a merge of every bucket's device
sketch, and `uniq` sketches at minute granularity add up to about one entry per report, so
merging them costs as much as reading the raw table (measured: 2.6 s for 10 million reports).
These tables keep an hour per row and `uniqCombined(12)` sketches: exact up to a few hundred
devices per row, then a HyperLogLog of 4096 cells (about 1.6 % error) that merges in constant
time, so a 7-day answer merges a few thousand small sketches whatever the report volume.

- `rollout_hourly`: pin validations per hour, host, app, app version, platform, result, cause
  and leaf pin: the pin distribution and the would-fail shares by version and platform.
- `rollout_network_hourly`: the same per client network prefix and leaf pin (no app version or
  platform: those would multiply its rows): the would-fail breakdown by network. Ordered by
  leaf pin, then network: "which networks see a failing key" reads only that key's rows.
Leaf pins are LowCardinality (a host serves a handful of keys), so "leaf pin not in the
candidate set" is decided once per distinct key, not once per row.

Frozen: written once and never edited (a change is a new migration). Statements are
formatted with `db`, `ttl_days` and `dedup_seconds`.
"""

VERSION = 2
NAME = "rollout hourly rollups"

STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS {db}.rollout_hourly (
    `hour` DateTime('UTC'),
    `host` LowCardinality(String),
    `app_id` LowCardinality(String),
    `app_version` LowCardinality(String),
    `platform` LowCardinality(String),
    `result` LowCardinality(String),
    `cause` LowCardinality(String),
    `leaf_pin` LowCardinality(String),
    `count` SimpleAggregateFunction(sum, UInt64),
    `devices` AggregateFunction(uniqCombined(12), String),
    `client_networks` AggregateFunction(uniqCombined(12), String),
    `first_seen` SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    `last_seen` SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    `observed_pins` SimpleAggregateFunction(any, Array(String))
) ENGINE = AggregatingMergeTree
PARTITION BY toDate(hour)
ORDER BY (host, hour, leaf_pin, app_id, app_version, platform, result, cause)
TTL hour + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rollout_hourly_mv
TO {db}.rollout_hourly AS
SELECT
    toStartOfHour(toDateTime(received_at)) AS hour,
    host, app_id, app_version, platform, result, cause, leaf_pin,
    sum(count) AS count,
    uniqCombinedState(12)(device) AS devices,
    uniqCombinedState(12)(client_network) AS client_networks,
    min(received_at) AS first_seen,
    max(received_at) AS last_seen,
    any(observed_pins) AS observed_pins
FROM {db}.reports
WHERE kind = 'pin_validation'
GROUP BY hour, host, app_id, app_version, platform, result, cause, leaf_pin""",
    """CREATE TABLE IF NOT EXISTS {db}.rollout_network_hourly (
    `hour` DateTime('UTC'),
    `host` LowCardinality(String),
    `leaf_pin` LowCardinality(String),
    `client_network` String,
    `app_id` LowCardinality(String),
    `result` LowCardinality(String),
    `cause` LowCardinality(String),
    `count` SimpleAggregateFunction(sum, UInt64),
    `devices` AggregateFunction(uniqCombined(12), String)
) ENGINE = AggregatingMergeTree
PARTITION BY toDate(hour)
ORDER BY (host, leaf_pin, client_network, hour, app_id, result, cause)
TTL hour + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rollout_network_hourly_mv
TO {db}.rollout_network_hourly AS
SELECT
    toStartOfHour(toDateTime(received_at)) AS hour,
    host, leaf_pin, client_network, app_id, result, cause,
    sum(count) AS count,
    uniqCombinedState(12)(device) AS devices
FROM {db}.reports
WHERE kind = 'pin_validation'
GROUP BY hour, host, leaf_pin, client_network, app_id, result, cause""",
)
