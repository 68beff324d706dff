"""Ingest's own counts, read the way Prometheus reads them (the text exposition format)."""

from __future__ import annotations

from prometheus_client import generate_latest

from ingest.metrics import IngestMetrics, Reason
from tests.support.pipeline import metric_value


def _text(metrics: IngestMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_counts_by_label_values() -> None:
    metrics = IngestMetrics()
    metrics.requests.add(("native", 202))
    metrics.requests.add(("native", 202))
    metrics.requests.add(("nel", 400))
    metrics.reports.add(("native",), 50)
    metrics.rejected.add(("nel", Reason.BAD_ITEM), 3)
    text = _text(metrics)
    requests = "pinwatch_ingest_requests_total"
    assert metric_value(text, requests, format="native", status="202") == 2
    assert metric_value(text, requests, format="nel", status="400") == 1
    assert metric_value(text, requests) == 3  # no other series
    assert metric_value(text, "pinwatch_ingest_reports_total", format="native") == 50
    rejected = "pinwatch_ingest_rejected_total"
    assert metric_value(text, rejected, format="nel", reason="bad_item") == 3


def test_produce_histogram_buckets_hold_values_up_to_their_bound() -> None:
    metrics = IngestMetrics()
    for seconds in (0.001, 0.0011, 0.003, 20.0):  # on a bound, just above it, between, above all
        metrics.produce_seconds.observe(seconds)
    text = _text(metrics)

    def bucket(le: str) -> float:
        return metric_value(text, "pinwatch_ingest_produce_seconds_bucket", le=le)

    assert bucket("0.001") == 1
    assert bucket("0.0025") == 2
    assert bucket("0.005") == 3
    assert bucket("10.0") == 3
    assert bucket("+Inf") == 4
    assert metric_value(text, "pinwatch_ingest_produce_seconds_count") == 4
    assert abs(metric_value(text, "pinwatch_ingest_produce_seconds_sum") - 20.0051) < 1e-9
