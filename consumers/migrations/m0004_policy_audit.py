"""Migration 4: the audit log of the live pin policy (`pinwatch policy`, consumers/policy/).

One row per change: who (`actor`, and the address the request came from), when, what (`action`,
the app and host it touched, `what` as JSON: each setting before and after), why (`reason`),
and the whole live state after it (`state`, JSON of pinwatch.livepolicy.LiveState). The newest
row IS the live state: a change is written as one row, so the change and its audit record are
one atomic insert and can never disagree. `version` grows by one per change; two owners racing
for one version both write, and the row ClickHouse recorded first (`recorded_at`, its own clock,
then `change_id`) is the one that counts: readers take it with `LIMIT 1 BY version`, and a
writer that finds an earlier row beside its own is told to retry. No TTL: the log is small and
kept.

Frozen: written once and never edited (a change is a new migration). Statements are
formatted with `db`, `ttl_days` and `dedup_seconds`.
"""

VERSION = 4
NAME = "policy audit log"

STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS {db}.policy_audit (
    `version` UInt64,
    `change_id` String,
    `changed_at` DateTime64(3, 'UTC'),
    `actor` String,
    `origin` String,
    `action` LowCardinality(String),
    `app` String,
    `host` String,
    `reason` String,
    `what` String,
    `state` String,
    `recorded_at` DateTime64(6, 'UTC') DEFAULT now64(6)
) ENGINE = MergeTree
ORDER BY (version, change_id)
SETTINGS non_replicated_deduplication_window = 1000""",
)
