"""Every metric ingest exposes, on the app's own registry (tests build several apps per process).

Labels are bounded: `format` is one of the registered formats, `status` an HTTP status ingest
answers with, `reason` one of the `Reason` values below.

The counts are plain ints that the registry reads when scraped, not prometheus_client's Counter
and Histogram: those take a lock and check their state on every increment (about half a
microsecond each, four per single-report request, a tenth of the request's own work; see
benchmarks/bench_ingest.py), and ingest counts on one event-loop thread, which needs neither.
The consumer counts once per batch, so it keeps prometheus_client's (consumers/metrics.py).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from enum import StrEnum

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString


class Reason(StrEnum):
    """Why a request (or an item of a batch format) was rejected: the `reason` label."""

    UNAUTHORIZED = "unauthorized"
    MEDIA_TYPE = "media_type"
    ENCODING = "encoding"
    TOO_LARGE = "too_large"
    BAD_JSON = "bad_json"
    BAD_REPORT = "bad_report"
    BAD_ITEM = "bad_item"  # one item of a batch format that accepts the rest (NEL)
    RATE_LIMITED = "rate_limited"  # the app's rate
    RATE_LIMITED_DEVICE = "rate_limited_device"
    RATE_LIMITED_NETWORK = "rate_limited_network"  # the client network's (/24, /48) rate
    UNAVAILABLE = "unavailable"  # Kafka down, slow or backlogged
    TIMEOUT = "timeout"  # headers and body not sent within ingest_read_timeout_seconds
    BAD_REQUEST = "bad_request"  # malformed HTTP, or asked for a protocol upgrade


class PlainCounter:
    """A counter by label values (a tuple in `labelnames` order)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.counts: dict[tuple[object, ...], int] = {}

    def add(self, labels: tuple[object, ...], amount: int = 1) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.counts.items()):
            family.add_metric([str(v) for v in labels], value)
        yield family


class Seconds:
    """A histogram of durations, without labels."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames: tuple[str, ...] = ()
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # a bucket holds values <= its bound
        self.sum += seconds

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), list(self.counts), strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.sum
        )


class Value:
    """A gauge without labels; None until first set (then not exported)."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames: tuple[str, ...] = ()
        self.value: float | None = None

    def collect(self) -> Iterator[Metric]:
        if self.value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=self.value)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = PlainCounter(
            "pinwatch_ingest_requests",
            "Report requests answered, by input format and HTTP status.",
            ("format", "status"),
        )
        self.reports = PlainCounter(
            "pinwatch_ingest_reports",
            "Reports accepted, i.e. acknowledged by Kafka, by input format.",
            ("format",),
        )
        self.rejected = PlainCounter(
            "pinwatch_ingest_rejected",
            "Requests (or batch items) rejected, by input format and reason.",
            ("format", "reason"),
        )
        self.produce_seconds = Seconds(
            "pinwatch_ingest_produce_seconds",
            "Time from handing a request's records to the producer until Kafka acknowledged all.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.produce_errors = PlainCounter(
            "pinwatch_ingest_produce_errors",
            "Requests whose records Kafka did not acknowledge, by reason "
            "(timeout, kafka_error, backlog, not_started).",
            ("reason",),
        )
        # The live pin policy this edge serves (ingest/policy.py).
        self.policy_version = Value(
            "pinwatch_ingest_policy_version",
            "Version of the live pin policy this edge serves to apps.",
        )
        self.policy_updated = Value(
            "pinwatch_ingest_policy_state_updated_timestamp_seconds",
            "When this edge last heard the live policy state from its owner (the consumer).",
        )
        self.policy_polls = PlainCounter(
            "pinwatch_ingest_policy_polls",
            "Polls of the live policy's owner, by outcome: changed, unchanged (304), older "
            "(refused: older than the state served), failed (unreachable or not an answer).",
            ("outcome",),
        )
        # process_start_time_seconds (and memory, CPU, open files), read from /proc when
        # scraped, not per request: a restart is a new start time (PinwatchCrashLooping).
        ProcessCollector(registry=self.registry)
        for metric in (
            self.requests,
            self.reports,
            self.rejected,
            self.produce_seconds,
            self.produce_errors,
            self.policy_version,
            self.policy_updated,
            self.policy_polls,
        ):
            self.registry.register(metric)
