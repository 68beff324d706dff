"""Every statement the consumer sends to ClickHouse, in one place (through `consumers.store.Store`,
the one way in). The rollout analysis keeps its own (`consumers/rollout/sql.py`), the schema
its migrations (`consumers/migrations/`).

Inserts go as Arrow (`reports`) or rows (`evidence`, a few per batch) with a deduplication
token: `reports` with `deduplicate_blocks_in_dependent_materialized_views`, so a retried insert
is dropped by the table and by every view. Arrow, not Native: clickhouse-connect builds a Native
block in Python value by value (LowCardinality dictionaries and arrays included), where an
Arrow table is handed over as it is and ClickHouse reads it in C++; measured against chDB,
benchmarks/README.md ("Consumer"). A server takes the same `INSERT ... FORMAT Arrow` over HTTP.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from consumers.schema import EVIDENCE_COLUMN_NAMES, EVIDENCE_COLUMN_TYPES
from consumers.store import Store
from pinwatch.vocabulary import OTHER


async def stored_offset(store: Store, topic: str, partition: int) -> int | None:
    """The highest offset of a partition already in `reports` (`kafka_progress`), if any."""
    rows = await store.query(
        "SELECT max(max_offset), count() FROM {db}.kafka_progress "
        "WHERE kafka_topic = {topic:String} AND kafka_partition = {partition:UInt32}",
        {"topic": topic, "partition": partition},
    )
    return int(rows[0][0]) if rows and rows[0][1] else None


async def ids_at_offset(
    store: Store,
    origin: tuple[str, int, int],
    hosts: list[str],
    times: list[int],
    ids: list[str],
) -> set[tuple[str, str]]:
    """(app_id, id) of these reports that have a row at this Kafka offset. Host and time narrow
    the read to the rows' granules (`reports` is sorted by host and received_at)."""
    topic, partition, offset = origin
    rows = await store.query(
        "SELECT DISTINCT app_id, id FROM {db}.reports "
        "WHERE host IN {hosts:Array(String)} "
        "AND received_at IN "
        "(SELECT fromUnixTimestamp64Milli(arrayJoin({times:Array(Int64)}), 'UTC')) "
        "AND id IN {ids:Array(String)} AND kafka_topic = {topic:String} "
        "AND kafka_partition = {partition:UInt32} AND kafka_offset = {offset:UInt64}",
        {
            "hosts": hosts,
            "times": times,
            "ids": ids,
            "topic": topic,
            "partition": partition,
            "offset": offset,
        },
    )
    return {(str(app), str(i)) for app, i in rows}


async def stored_ids(
    store: Store, apps: set[str], ids: list[str], since_ms: int
) -> set[tuple[str, str]]:
    """(app_id, id) among these apps and ids stored since `since_ms` (`report_ids`, sorted by
    id: about one granule read per id and part). The ids go as data, not as a parameter."""
    found = await store.query_with_values(
        "SELECT DISTINCT app_id, id FROM {db}.report_ids "
        "WHERE received_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
        "AND app_id IN {apps:Array(String)} AND id IN {values}",
        ids,
        {"since": since_ms, "apps": sorted(apps)},
    )
    return {(str(a), str(i)) for a, i in found}


async def count_stored_since(store: Store, since_ms: int, limit: int) -> int:
    """How many ids `report_ids` holds received since `since_ms`, counted up to `limit` only
    (reads at most that many rows: a window of billions is not scanned to say so)."""
    rows = await store.query(
        "SELECT count() FROM (SELECT 1 FROM {db}.report_ids "
        "WHERE received_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
        "LIMIT {limit:UInt64})",
        {"since": since_ms, "limit": limit},
    )
    return int(rows[0][0])


async def stored_since(store: Store, since_ms: int, limit: int) -> list[tuple[str, str, int]]:
    """(app_id, id, received_at ms) of the ids in `report_ids` received since `since_ms`, newest
    first, at most `limit` (the consumer's in-memory id set is loaded from it)."""
    rows = await store.query(
        "SELECT app_id, id, toUnixTimestamp64Milli(received_at) AS at FROM {db}.report_ids "
        "WHERE received_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
        "ORDER BY at DESC LIMIT {limit:UInt64}",
        {"since": since_ms, "limit": limit},
    )
    return [(str(a), str(i), int(at)) for a, i, at in rows]


async def recent_versions(store: Store, days: int = 30) -> list[tuple[str, str]]:
    """(app_id, app_version) pairs seen lately: the version labels a restart keeps."""
    rows = await store.query(
        "SELECT DISTINCT app_id, app_version FROM {db}.rollup_minute "
        f"WHERE minute >= now() - INTERVAL {int(days)} DAY AND app_version != ''"
    )
    return [(str(a), str(v)) for a, v in rows]


async def insert_reports(
    store: Store, table: pa.Table, token: str, settings: dict[str, Any]
) -> int:
    return await store.insert_arrow(
        "reports",
        table,
        settings={
            "insert_deduplication_token": token,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
            **settings,
        },
    )


async def insert_evidence(
    store: Store, rows: list[tuple[Any, ...]], token: str, settings: dict[str, Any]
) -> int:
    return await store.insert(
        "evidence",
        rows,
        EVIDENCE_COLUMN_NAMES,
        column_types=EVIDENCE_COLUMN_TYPES,
        settings={"insert_deduplication_token": token + ":evidence", **settings},
    )


# --- the failing-devices gauges (consumers/failing.py) -------------------------------------------

FAILING_WINDOW = "INTERVAL 5 MINUTE"
_FAILURES = (
    f"minute >= now() - {FAILING_WINDOW} AND kind = 'pin_validation' AND result != 'ok' "
    "AND enforced = 1"
)

# Raw (app, version) pairs any replica stored lately: this replica learns them as if it had
# consumed one of their reports, so replicas whose partitions have not carried a new release yet
# label it (and fold the lowest version into `other`) alike.
FAILING_VERSIONS_SQL = (
    "SELECT DISTINCT app_id, app_version FROM {db}.rollup_minute "
    f"WHERE minute >= now() - {FAILING_WINDOW} AND kind = 'pin_validation'"
)

_FOLDED = f"""
    SELECT
        if(app_id IN {{apps:Array(String)}}, app_id, '{OTHER}') AS app,
        if(policy_host = '', '{OTHER}', policy_host) AS host,
        cause,
        if(app_version = '', '',
           if((app_id, app_version) IN {{labelled:Array(Tuple(String, String))}},
              app_version, '{OTHER}')) AS version,
        devices,
        client_networks
    FROM {{db}}.rollup_minute
    WHERE {_FAILURES}"""

# One scan per view, tagged, rather than GROUPING SETS: grouping()'s bits mean different things
# under different servers' `force_grouping_standard_compatibility`.
FAILING_SQL = " UNION ALL ".join(
    f"SELECT '{view}', app, host, {key}, uniqMerge(devices), uniqMerge(client_networks) "
    f"FROM ({_FOLDED}) GROUP BY app, host{group}"
    for view, key, group in (
        ("cause", "cause", ", cause"),
        ("all", "''", ""),
        ("version", "version", ", version"),
    )
)


async def failing_versions(store: Store) -> list[tuple[str, str]]:
    return [(str(a), str(v)) for a, v in await store.query(FAILING_VERSIONS_SQL)]


async def failing(
    store: Store, apps: list[str], labelled: list[tuple[str, str]]
) -> list[tuple[Any, ...]]:
    """(view, app, host, key, devices, networks) rows, labels folded in the query."""
    return await store.query(FAILING_SQL, {"apps": apps, "labelled": labelled})
