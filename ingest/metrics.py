"""Every metric ingest exposes, on the app's own registry (tests build several apps per process).

Labels are bounded: `format` is one of the registered formats, `status` an HTTP status ingest
answers with, `reason` one of the `Reason` values below.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Histogram


class Reason(StrEnum):
    """Why a request (or an item of a batch format) was rejected: the `reason` label."""

    UNAUTHORIZED = "unauthorized"
    MEDIA_TYPE = "media_type"
    ENCODING = "encoding"
    TOO_LARGE = "too_large"
    BAD_JSON = "bad_json"
    BAD_REPORT = "bad_report"
    BAD_ITEM = "bad_item"  # one item of a batch format that accepts the rest (NEL)
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"  # Kafka down, slow or backlogged


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pinwatch_ingest_requests",
            "Report requests answered, by input format and HTTP status.",
            ["format", "status"],
            registry=self.registry,
        )
        self.reports = Counter(
            "pinwatch_ingest_reports",
            "Reports accepted, i.e. acknowledged by Kafka, by input format.",
            ["format"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "pinwatch_ingest_rejected",
            "Requests (or batch items) rejected, by input format and reason.",
            ["format", "reason"],
            registry=self.registry,
        )
        self.produce_seconds = Histogram(
            "pinwatch_ingest_produce_seconds",
            "Time from handing a request's records to the producer until Kafka acknowledged all.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.produce_errors = Counter(
            "pinwatch_ingest_produce_errors",
            "Requests whose records Kafka did not acknowledge, by reason "
            "(timeout, kafka_error, backlog, not_started).",
            ["reason"],
            registry=self.registry,
        )
