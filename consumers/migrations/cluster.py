"""The same frozen migrations in cluster form, for a ClickHouse cluster (`pinwatch migrate
--cluster NAME`, or `PINWATCH_CLICKHOUSE_CLUSTER`).

Each single-node statement has one cluster rendering, derived mechanically so the two can never
describe different schemas:

- a table `X` becomes `X_local ON CLUSTER`, its engine the Replicated variant (MergeTree ->
  ReplicatedMergeTree, AggregatingMergeTree -> ReplicatedAggregatingMergeTree, ...) under
  `/clickhouse/tables/{shard}/<db>/X_local`, with `replicated_deduplication_window` in place of
  `non_replicated_deduplication_window` (so the consumer's insert dedup tokens hold on
  replicas), plus a `Distributed` table `X` over the `X_local`s. Everything that reads or writes
  keeps using the plain names: the consumer's inserts, the rollout, dashboard and alert-gauge
  queries are the same in both forms.
- `reports` is sharded by the device hash (a device's reports, and their rollups' device
  sketches, stay on one shard); `evidence` by host and leaf pin. Tables that only materialized
  views write into are read through their Distributed table, never inserted into.
- a materialized view reads and writes the shard's local tables, so every shard keeps its own
  rollups of its own reports.
- any other statement (the backfill INSERT ... SELECT) runs once, through the Distributed
  tables.
A statement that fits none of these has no cluster form and is refused (a test renders every
migration), so a new migration cannot quietly skip the cluster.
"""

from __future__ import annotations

import re

_TABLE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS \{db\}\.(?P<name>\w+) (?P<columns>\(.*\)) "
    r"ENGINE = (?P<engine>\w*MergeTree)\n(?P<rest>.*)$",
    re.S,
)
_VIEW = re.compile(
    r"^CREATE MATERIALIZED VIEW IF NOT EXISTS \{db\}\.(?P<name>\w+)\n"
    r"TO \{db\}\.(?P<target>\w+) AS\n(?P<select>.*)$",
    re.S,
)
_INSERT_SELECT = re.compile(r"^INSERT INTO \{db\}\.\w+ SELECT ", re.S)
_TABLE_NAME = re.compile(r"\{db\}\.(\w+)")

# Direct inserts go through the Distributed table: the key decides each row's shard.
SHARDING_KEYS = {
    "reports": "cityHash64(device)",
    "evidence": "cityHash64(host, leaf_pin)",
    "policy_audit": "cityHash64(version)",  # written by the policy owner, one row a change
}
# Tables only materialized views fill: read through Distributed, never inserted into it.
_READ_ONLY_KEY = "rand()"

# The migration bookkeeping is one table for the whole cluster (no {shard} in its path).
SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER '{cluster}' "
    "(version UInt32, name String, applied_at DateTime('UTC') DEFAULT now(), "
    "checksum String DEFAULT '') "
    "ENGINE = ReplicatedMergeTree('/clickhouse/pinwatch/{db}/schema_migrations', '{{replica}}') "
    "ORDER BY version"
)


class NoClusterForm(ValueError):
    """A migration statement the cluster renderer does not know how to distribute."""


def local(name: str) -> str:
    return f"{name}_local"


def render(statement: str) -> list[str]:
    """The cluster form of one single-node statement (still formatted with `db`, `ttl_days`,
    `dedup_seconds`, plus `cluster`)."""
    table = _TABLE.match(statement)
    if table is not None:
        name, engine = table["name"], table["engine"]
        path = f"'/clickhouse/tables/{{{{shard}}}}/{{db}}/{local(name)}', '{{{{replica}}}}'"
        rest = table["rest"].replace(
            "non_replicated_deduplication_window", "replicated_deduplication_window"
        )
        key = SHARDING_KEYS.get(name, _READ_ONLY_KEY)
        return [
            f"CREATE TABLE IF NOT EXISTS {{db}}.{local(name)} ON CLUSTER '{{cluster}}' "
            f"{table['columns']} ENGINE = Replicated{engine}({path})\n{rest}",
            f"CREATE TABLE IF NOT EXISTS {{db}}.{name} ON CLUSTER '{{cluster}}' "
            f"AS {{db}}.{local(name)} "
            f"ENGINE = Distributed('{{cluster}}', '{{db}}', '{local(name)}', {key})",
        ]
    view = _VIEW.match(statement)
    if view is not None:
        select = _TABLE_NAME.sub(lambda m: f"{{db}}.{local(m.group(1))}", view["select"])
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.{view['name']} "
            f"ON CLUSTER '{{cluster}}'\nTO {{db}}.{local(view['target'])} AS\n{select}"
        ]
    if _INSERT_SELECT.match(statement):
        return [statement]
    raise NoClusterForm(f"no cluster form for: {statement.splitlines()[0][:120]}")
