"""Ingest's own counts, read the way Prometheus reads them (the text exposition format)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ingest.metrics import IngestMetrics, Reason


def _samples(metrics: IngestMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counts_by_label_values() -> None:
    metrics = IngestMetrics()
    metrics.requests.add(("native", 202))
    metrics.requests.add(("native", 202))
    metrics.requests.add(("nel", 400))
    metrics.reports.add(("native",), 50)
    metrics.rejected.add(("nel", Reason.BAD_ITEM), 3)
    samples = _samples(metrics)
    requests = "pinwatch_ingest_requests_total"
    assert samples[(requests, (("format", "native"), ("status", "202")))] == 2
    assert samples[(requests, (("format", "nel"), ("status", "400")))] == 1
    assert samples[("pinwatch_ingest_reports_total", (("format", "native"),))] == 50
    rejected = ("pinwatch_ingest_rejected_total", (("format", "nel"), ("reason", "bad_item")))
    assert samples[rejected] == 3


def test_produce_histogram_buckets_hold_values_up_to_their_bound() -> None:
    metrics = IngestMetrics()
    for seconds in (0.001, 0.0011, 0.003, 20.0):  # on a bound, just above it, between, above all
        metrics.produce_seconds.observe(seconds)
    samples = _samples(metrics)

    def bucket(le: str) -> float:
        return samples[("pinwatch_ingest_produce_seconds_bucket", (("le", le),))]

    assert bucket("0.001") == 1
    assert bucket("0.0025") == 2
    assert bucket("0.005") == 3
    assert bucket("10.0") == 3
    assert bucket("+Inf") == 4
    assert samples[("pinwatch_ingest_produce_seconds_count", ())] == 4
    assert abs(samples[("pinwatch_ingest_produce_seconds_sum", ())] - 20.0051) < 1e-9
