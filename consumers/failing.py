"""The breadth behind every pinning page: distinct devices and client networks with enforced pin
failures in the last 5 minutes, read from ClickHouse's per-minute rollups (the query is
consumers/storage.py's `FAILING_SQL`).

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

from consumers import storage
from consumers.metrics import VersionLabels
from consumers.store import Store


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
    for app, version in await storage.failing_versions(store):
        versions.label(app, version)
    rows = await storage.failing(store, sorted(app_ids), versions.labelled())
    return [FailingRow(str(v), str(a), str(h), str(k), int(d), int(n)) for v, a, h, k, d, n in rows]
