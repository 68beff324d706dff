"""What the consumer writes: the column lists of the tables it inserts into, in insert order.

The tables themselves are created by the frozen migrations in consumers/migrations/; a test
builds the schema and checks these lists against what ClickHouse reports (`system.columns`), so
the insert path and the migrations cannot drift apart. A new column is a new migration plus an
entry here.

- `reports`: one row per report as classified by the consumer. Partitioned by day, ordered by
  (host, received_at) for per-host time queries, TTL `settings.retention_days`. Materialized
  views keep `rollup_minute` (per-minute sums and device/network sketches), `evidence_hourly`,
  `kafka_progress` (highest offset stored per partition), `report_ids` (the retry lookup) and
  the rollout's hourly rollups from it.
- `evidence`: sampled full chains (and raw payloads) per host, observed leaf pin and hour,
  written by the consumer (at most `settings.evidence_per_pin_hour` per key and process).
"""

from __future__ import annotations

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

# Formats whose report id tells one device's report from another's: the native id is the
# client's own, TrustKit's is derived from content that includes the (hashed) vendor id. NEL and
# HPKP carry no device identity, so two devices on one network sending the same report in the
# same minute get the same derived id: deduplicating those would drop real events, so they are
# deduplicated by Kafka offset only (a lost 202 followed by a browser retry can count twice).
# Migration 3 bakes this list into the `report_ids` view: changing it takes a new migration.
ID_DEDUP_FORMATS = frozenset({"native", "trustkit"})
