"""Every metric the consumer exposes, on its own CollectorRegistry (one per consumer, so tests can
run several in one process).

Report counters (`pinwatch_pin_validations_total`, `pinwatch_network_errors_total`,
`pinwatch_consumer_consumed_records_total`, `pinwatch_consumer_inserted_reports_total`) move
only when the offsets of the batch they describe are committed: the process that commits a batch
is the one that counts it, so a batch replayed after a crash between insert and commit is counted
once (by the new process), never twice. `dead_lettered_total` moves when the dead-letter topic
acknowledged the record.

Two ways to count, on purpose: these are prometheus_client's Counters, moved once per committed
batch and label set (`apply`: a few hundred increments per 50,000 reports, nothing measurable),
while ingest counts every request with plain ints read at scrape time (ingest/metrics.py
`PlainCounter`, whose docstring has the measurement: its increments were a tenth of a
single-report request's work).

Label bounds: `app` is an app of the policy (else `other`); `host` is the policy entry covering
the reported host (a subdomain under `include_subdomains` is counted under its entry), `other` for
hosts outside the policy; `platform` one of the wire platforms (else `other`); `app_version` one
of the `metrics_max_app_versions` highest versions seen per app (see `VersionLabels`), else
`other`; `pin_match` is `unknown` for hosts outside the policy and for reports that carry no
pins (a NEL report), `none` only when pins were seen and none of them is pinned.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector

from pinwatch.vocabulary import OTHER, PLATFORMS

if TYPE_CHECKING:
    from consumers.failing import FailingRow

PinKey = tuple[str, str, str, str, str, str, str, str]  # app,host,platform,version,result,...
NetKey = tuple[str, str, str, str]  # app, host, platform, category


def fold_labels(
    app_id: str, policy_host: str, platform: str, known_apps: frozenset[str]
) -> tuple[str, str, str]:
    """The (app, host, platform) label values every report metric shares, bounded: an app
    outside the policy, a host no policy entry covers (policy_host '') and an unknown platform
    fold into `other`."""
    return (
        app_id if app_id in known_apps else OTHER,
        policy_host or OTHER,
        platform if platform in PLATFORMS else OTHER,
    )


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Numeric-aware ordering: 5.10.0 > 5.9.1 > 5.9.1-beta (a text part ranks below a number).
    Numbers compare by digit count, then digits: the same order as int(), for any length (a
    client's version can be 5,000 digits, which int() refuses)."""
    parts = []
    for p in re.findall(r"\d+|[A-Za-z]+", version):
        if p.isdigit():
            digits = p.lstrip("0") or "0"
            parts.append((1, len(digits), digits))
        else:
            parts.append((0, 0, p))
    return tuple(parts)


class VersionLabels:
    """Which app versions get their own label: the N *highest* versions seen per app.

    "Recent" is decided by version order, not by arrival: a version string is a release, and the
    newest releases are the ones a rollout watches. A newly seen higher version takes a slot and
    the lowest labelled one folds into `other` from then on. At start the set is seeded from the
    versions ClickHouse holds (`seed`), so a restart keeps the same labels.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._top: dict[str, list[str]] = {}  # app -> versions, highest first
        self._memo: dict[tuple[str, str], str] = {}
        # Moves whenever a label may have changed (a version took another's slot), so callers
        # that cache labels know to drop them.
        self.generation = 0

    def seed(self, pairs: Iterable[tuple[str, str]]) -> None:
        for app, version in pairs:
            self.label(app, version)

    def labelled(self) -> list[tuple[str, str]]:
        """Every (app, version) pair that has its own label now (at most `limit` per app)."""
        return [(app, version) for app, top in self._top.items() for version in top]

    def label(self, app: str, version: str) -> str:
        try:
            return self._memo[(app, version)]
        except KeyError:
            pass
        if not version:
            return ""
        top = self._top.setdefault(app, [])
        if version not in top:
            key = version_key(version)
            if len(top) < self.limit or key > version_key(top[-1]):
                top.append(version)
                top.sort(key=version_key, reverse=True)
                del top[self.limit :]
                self._memo.clear()  # a slot moved: earlier decisions may be stale
                self.generation += 1
        result = version if version in top else OTHER
        if len(self._memo) > 100_000:
            self._memo.clear()
        self._memo[(app, version)] = result
        return result


class ConsumerMetrics:
    def __init__(self, max_app_versions: int = 5) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_start_time_seconds (and memory, CPU, open files), read from /proc when
        # scraped: a restart is a new start time, which PinwatchCrashLooping counts.
        ProcessCollector(registry=r)
        self.versions = VersionLabels(max_app_versions)
        self.pin_validations = prometheus_client.Counter(
            "pinwatch_pin_validations_total",
            "Pin validations reported (by each report's count), once their offsets committed.",
            ["app", "host", "platform", "app_version", "result", "pin_match", "enforced", "cause"],
            registry=r,
        )
        self.network_errors = prometheus_client.Counter(
            "pinwatch_network_errors_total",
            "Network errors reported (by each report's count); never pin failures.",
            ["app", "host", "platform", "category"],
            registry=r,
        )
        # Distinct counts from ClickHouse (consumers/failing.py), the same on every replica.
        # Each view is its own metric: distinct counts do not add up across label values.
        self.failing_devices = Gauge(
            "pinwatch_failing_devices",
            "Distinct devices with enforced pin failures in the last 5 minutes (ClickHouse).",
            ["app", "host", "cause"],
            registry=r,
        )
        self.failing_networks = Gauge(
            "pinwatch_failing_networks",
            "Distinct client network prefixes with enforced pin failures, last 5 minutes.",
            ["app", "host", "cause"],
            registry=r,
        )
        self.failing_devices_all_causes = Gauge(
            "pinwatch_failing_devices_all_causes",
            "Distinct devices with enforced pin failures of any cause, last 5 minutes.",
            ["app", "host"],
            registry=r,
        )
        self.failing_networks_all_causes = Gauge(
            "pinwatch_failing_networks_all_causes",
            "Distinct client networks with enforced pin failures of any cause, last 5 minutes.",
            ["app", "host"],
            registry=r,
        )
        self.failing_devices_by_version = Gauge(
            "pinwatch_failing_devices_by_version",
            "Distinct devices with enforced pin failures, by app version label (folded as "
            "pinwatch_pin_validations_total's), last 5 minutes.",
            ["app", "host", "app_version"],
            registry=r,
        )
        self.failing_networks_by_version = Gauge(
            "pinwatch_failing_networks_by_version",
            "Distinct client networks with enforced pin failures, by app version label, last "
            "5 minutes.",
            ["app", "host", "app_version"],
            registry=r,
        )
        self.consumed = prometheus_client.Counter(
            "pinwatch_consumer_consumed_records",
            "Kafka records (report batches) consumed and committed.",
            registry=r,
        )
        self.inserted = prometheus_client.Counter(
            "pinwatch_consumer_inserted_reports",
            "Reports stored in ClickHouse and committed, by kind.",
            ["kind"],
            registry=r,
        )
        self.duplicates = prometheus_client.Counter(
            "pinwatch_consumer_duplicate_reports",
            "Reports dropped as client retries (report id already seen within the dedup window).",
            registry=r,
        )
        self.retry_lookups = prometheus_client.Counter(
            "pinwatch_consumer_retry_lookups",
            "Batches checked for client retries stored before, by what answered: memory (it "
            "held every id stored within the window) or clickhouse (report_ids was read).",
            ["answered_by"],
            registry=r,
        )
        self.insert_seconds = Histogram(
            "pinwatch_consumer_insert_seconds",
            "Duration of one successful ClickHouse batch insert.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.insert_errors = prometheus_client.Counter(
            "pinwatch_consumer_insert_errors", "Failed ClickHouse insert attempts.", registry=r
        )
        self.lag = Gauge(
            "pinwatch_consumer_lag",
            "Records between the partition's end and what this consumer has processed.",
            ["topic", "partition"],
            registry=r,
        )
        self.last_insert = Gauge(
            "pinwatch_consumer_last_insert_timestamp_seconds",
            "Unix time of the last successful ClickHouse insert.",
            registry=r,
        )
        self.dead_lettered = prometheus_client.Counter(
            "pinwatch_consumer_dead_lettered",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.paused = Gauge(
            "pinwatch_consumer_paused",
            "1 while consumption is paused (ClickHouse unavailable or inserts behind).",
            registry=r,
        )
        for kind in ("pin_validation", "network_error"):
            self.inserted.labels(kind=kind)
        for source in ("memory", "clickhouse"):
            self.retry_lookups.labels(answered_by=source)

    def apply(self, counts: BatchCounts) -> None:
        """Add a committed batch's counts. Called with no await in between the commit and this,
        so a scrape sees either none or all of a batch."""
        for counter, by_labels in (
            (self.pin_validations, counts.pins),
            (self.network_errors, counts.network),
        ):
            for key, n in by_labels.items():
                counter.labels(*key).inc(n)
        for kind, n in counts.kinds.items():
            self.inserted.labels(kind=kind).inc(n)
        self.duplicates.inc(counts.duplicates)
        if counts.messages:
            self.consumed.inc(counts.messages)

    def set_failing(self, rows: Iterable[FailingRow]) -> None:
        """Replace every failing gauge with fresh rows (labels already folded by the query)."""
        gauges = {
            "cause": (self.failing_devices, self.failing_networks),
            "all": (self.failing_devices_all_causes, self.failing_networks_all_causes),
            "version": (self.failing_devices_by_version, self.failing_networks_by_version),
        }
        for pair in gauges.values():
            for gauge in pair:
                gauge.clear()
        for row in rows:
            devices, networks = gauges[row.view]
            labels = (row.app, row.host) + ((row.key,) if row.view != "all" else ())
            devices.labels(*labels).set(row.devices)
            networks.labels(*labels).set(row.networks)


class BatchCounts:
    """The metric increments a batch will cause once committed (aggregated per label set)."""

    __slots__ = ("pins", "network", "kinds", "messages", "duplicates")

    def __init__(self) -> None:
        self.pins: Counter[PinKey] = Counter()
        self.network: Counter[NetKey] = Counter()
        self.kinds: Counter[str] = Counter()
        self.messages = 0
        self.duplicates = 0

    def merge(self, other: BatchCounts) -> None:
        self.pins.update(other.pins)
        self.network.update(other.network)
        self.kinds.update(other.kinds)
        self.messages += other.messages
        self.duplicates += other.duplicates
