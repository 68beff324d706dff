"""The breadth behind every pinning page: distinct devices and client networks with enforced pin
failures in the last 5 minutes, read from ClickHouse's per-minute rollups.

Three views, each a distinct count that Prometheus cannot add up from the others (a device failing
with two causes, or on two app versions, is one device):

- by cause (`pinwatch_failing_devices`/`_networks{app,host,cause}`): rotation and interception;
- all causes (`..._all_causes{app,host}`): the generic failure-rate page;
- by app version (`..._by_version{app,host,app_version}`): the failing-release page.

Labels are folded in the query itself, exactly as the report counters fold them (an app outside
the policy and a host no entry covers are `other`; an app version is its own label only while it
is one of the `metrics_max_app_versions` highest of its app, see `VersionLabels`), so the count
under `other` is a distinct count too, never a sum of counts.

Every consumer replica reads the same rows and exports the same values: rules and panels take
`max` across replicas, never `sum` (docs/alerting.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.metrics import VersionLabels
from consumers.store import Store
from pinwatch.vocabulary import OTHER

WINDOW = "INTERVAL 5 MINUTE"
_FAILURES = (
    f"minute >= now() - {WINDOW} AND kind = 'pin_validation' AND result != 'ok' AND enforced = 1"
)

# Raw (app, version) pairs any replica stored lately: this replica learns them as if it had
# consumed one of their reports, so replicas whose partitions have not carried a new release yet
# label it (and fold the lowest version into `other`) alike.
VERSIONS_SQL = (
    "SELECT DISTINCT app_id, app_version FROM {db}.rollup_minute "
    f"WHERE minute >= now() - {WINDOW} AND kind = 'pin_validation'"
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


@dataclass(frozen=True)
class FailingRow:
    view: str  # "cause", "all" or "version"
    app: str
    host: str
    key: str  # the cause, the app version label, or "" for all causes
    devices: int
    networks: int


async def read_failing(
    store: Store, app_ids: frozenset[str], versions: VersionLabels
) -> list[FailingRow]:
    for app, version in await store.query(VERSIONS_SQL):
        versions.label(str(app), str(version))
    rows = await store.query(
        FAILING_SQL, {"apps": sorted(app_ids), "labelled": versions.labelled()}
    )
    return [FailingRow(str(v), str(a), str(h), str(k), int(d), int(n)) for v, a, h, k, d, n in rows]
