"""Migration 3: report ids for the consumer's client-retry lookup (consumers/steps.py RecentIds).

The lookup asks "which of these ids are stored?"; `reports` is sorted by (host, received_at), so
that read the window's whole `id` column. Sorted by (app_id, id), the same question reads one
small granule per id. A bloom-filter index on reports.id would not do: a lookup carries
thousands of ids, and a granule whose filter matches any one of them is read, which is nearly
every granule. Only native and TrustKit reports are kept: their ids tell one device's report from
another's (consumers/schema.py ID_DEDUP_FORMATS says why the others are not).

Frozen: written once and never edited (a change is a new migration). Statements are
formatted with `db`, `ttl_days` and `dedup_seconds`.
"""

VERSION = 3
NAME = "report ids for the retry lookup"

STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS {db}.report_ids (
    `app_id` LowCardinality(String),
    `id` String,
    `received_at` DateTime64(3, 'UTC')
) ENGINE = MergeTree
PARTITION BY toDate(received_at)
ORDER BY (app_id, id)
TTL toDateTime(received_at) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1,
    index_granularity = 256""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.report_ids_mv
TO {db}.report_ids AS
SELECT app_id, id, received_at FROM {db}.reports
WHERE format IN ('native', 'trustkit')""",
    """INSERT INTO {db}.report_ids SELECT app_id, id, received_at FROM {db}.reports
WHERE format IN ('native', 'trustkit')
AND received_at >= now64(3) - toIntervalSecond({dedup_seconds})""",
)
