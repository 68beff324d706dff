"""Every query the mixin ships (alert and recording rules, dashboard panels) aggregates each
consumer metric the way its meaning across replicas requires, so one consumer or three give
the same answer:

- the failing-devices gauges are global (read from ClickHouse, every replica exports the same
  figure): `max` across replicas, never `sum` (three replicas would triple the devices);
- `pinwatch_consumer_lag` is per partition, exported by the replica that owns it: `max` per
  topic and partition first (a rebalance can show one partition on two replicas), or a sum
  within one replica (`by (..., instance)`);
- `pinwatch_consumer_last_insert_timestamp_seconds` and `pinwatch_consumer_paused` describe one
  replica: kept per `instance`, so one stuck replica is not hidden behind a healthy one.

Counters are per replica and summed; the promtool cases in alerts/tests/replicas.test.yml show
the rules' answers with one consumer and with three.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from alerts import generate
from consumers.metrics import ConsumerMetrics

JSON_DIR = Path(generate.__file__).resolve().parent.parent / "dashboards" / "json"

_EXPORTED = ConsumerMetrics().registry._collector_to_names  # noqa: SLF001 - names per metric
GLOBAL = sorted(
    name for names in _EXPORTED.values() for name in names if name.startswith("pinwatch_failing_")
)
PER_PARTITION = ["pinwatch_consumer_lag"]
PER_REPLICA = ["pinwatch_consumer_last_insert_timestamp_seconds", "pinwatch_consumer_paused"]

# The aggregation right around a metric: `max by (a, b) (metric{...}` or `sum(metric`.
_AROUND = re.compile(r"(\w+)\s*(?:(by|without)\s*\(([^)]*)\)\s*)?\(\s*$")


def _queries() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(generate.RULES_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("record") or rule["alert"], rule["expr"]
    for path in sorted(JSON_DIR.glob("*.json")):
        model = json.loads(path.read_text())
        panels = [p for top in model["panels"] for p in [top, *top.get("panels", [])]]
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    yield f"{path.stem}: {panel['title']}", target["expr"]


def _uses(expr: str, metric: str) -> Iterator[tuple[str, str, set[str]]]:
    """(aggregator, by|without|"", labels) around each use of `metric` in `expr`."""
    for match in re.finditer(rf"(?<![:\w]){metric}(?![:\w])", expr):
        around = _AROUND.search(expr[: match.start()])
        if around is None:
            yield "", "", set()
        else:
            labels = {label.strip() for label in (around.group(3) or "").split(",")}
            yield around.group(1), around.group(2) or "", labels - {""}


def test_the_classes_are_what_the_consumer_exports() -> None:
    assert "pinwatch_failing_devices" in GLOBAL and len(GLOBAL) == 6, GLOBAL


@pytest.mark.parametrize("metric", GLOBAL)
def test_global_gauges_are_taken_with_max(metric: str) -> None:
    uses = [(where, use) for where, expr in _queries() for use in _uses(expr, metric)]
    assert uses, f"nothing reads {metric}"
    for where, (aggregator, _, _) in uses:
        assert aggregator == "max", f"{where}: {metric} under {aggregator or 'no'} aggregation"


def test_partition_lag_is_counted_once_per_partition() -> None:
    for where, expr in _queries():
        for aggregator, mode, labels in _uses(expr, "pinwatch_consumer_lag"):
            per_partition = aggregator == "max" and {"topic", "partition"} <= labels
            within_replica = mode == "by" and "instance" in labels
            assert per_partition or within_replica, f"{where}: {aggregator} {mode} {labels}"


@pytest.mark.parametrize("metric", PER_REPLICA)
def test_per_replica_gauges_stay_per_instance(metric: str) -> None:
    for where, expr in _queries():
        for aggregator, mode, labels in _uses(expr, metric):
            kept = aggregator == "" or (mode == "by" and "instance" in labels)
            assert kept, f"{where}: {metric} under {aggregator} {mode} {labels}"
