"""The failing-devices gauges every pinning page reads for breadth, end to end: reports POSTed to
the real ingest from several client networks (loopback source addresses, one /24 each), through
the real broker and consumer into chDB, read back by `refresh_failing` and served on /metrics.

Distinct counts per cause, over all causes and per app version (folded exactly like the report
counter's `app_version`), and the same values from a second replica that consumed nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumers.consumer import Consumer
from devstack.certs import CertificateAuthority
from devstack.clients import native_batch, pin_validation
from pinwatch.settings import Settings
from tests.support.names import REPORT_ONLY_HOST, TEST_APP, TEST_HOST, TEST_KEY
from tests.support.pipeline import Pipeline, run_pipeline

FAILING = (
    "pinwatch_failing_devices",
    "pinwatch_failing_networks",
    "pinwatch_failing_devices_all_causes",
    "pinwatch_failing_networks_all_causes",
    "pinwatch_failing_devices_by_version",
    "pinwatch_failing_networks_by_version",
)


async def post_from(p: Pipeline, source: str, body: dict[str, Any]) -> None:
    """POST from a loopback `source` address: ingest keeps its /24 as the client network."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(base_url=p.ingest_url, transport=transport, timeout=30) as c:
        response = await c.post("/v1/reports", json=body, headers={"X-Pinwatch-Key": TEST_KEY})
    assert response.status_code == 202, response.text


def samples(
    text: str, names: tuple[str, ...]
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in names
    }


def gauge(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted({"app": TEST_APP, "host": TEST_HOST, **labels}.items()))))


async def test_failing_gauges_count_distinct_devices_and_networks_per_view(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    rotated, intercepted = ca.chain("rotated"), ca.intercepted_chain()

    def failure(chain: Any = rotated, **kw: Any) -> dict[str, Any]:
        return pin_validation(TEST_HOST, chain, result="pin_mismatch", **kw)

    # Two labelled versions per app: 5.3.0 and 5.2.0; 5.1.0 and 5.0.0 fold into `other`.
    settings = make_settings(metrics_max_app_versions=2)
    async with run_pipeline(settings) as p:
        # The labelled versions first: which versions get a label depends on the order the
        # consumer sees them, and the counter keeps whatever label it gave.
        labelled = [
            # d1 on network A: a rotation and an interception (two causes, one device), and
            # after an upgrade the same rotation on 5.2.0 (two versions, one device).
            ("127.31.1.1", "d1", "5.3.0", [failure(count=50), failure(intercepted)]),
            ("127.31.1.1", "d1", "5.2.0", [failure()]),
            ("127.31.2.1", "d2", "5.2.0", [failure(count=3)]),
        ]
        folded = [
            # d3 on network B without a chain (cause unknown), d4 on C.
            ("127.31.2.1", "d3", "5.1.0", [failure(None, with_chain=False)]),
            ("127.31.3.1", "d4", "5.0.0", [failure()]),
            # Never counted: successes, report-only failures, a report-only host.
            ("127.31.4.1", "ok", "5.3.0", [pin_validation(TEST_HOST, ca.chain("primary"))]),
            ("127.31.5.1", "ro", "5.3.0", [failure(enforced=False)]),
            (
                "127.31.6.1",
                "ro-host",
                "5.3.0",
                [pin_validation(REPORT_ONLY_HOST, rotated, result="pin_mismatch", enforced=None)],
            ),
        ]
        inserted = 0
        for wave in (labelled, folded):
            for source, device, version, reports in wave:
                body = native_batch(reports, app=TEST_APP, version=version, device=device)
                await post_from(p, source, body)
                inserted += len(reports)
            await p.wait_inserted(inserted, timeout=60)
        assert p.consumer is not None
        await p.consumer.refresh_failing()
        text = await p.metrics_text()
        found = samples(text, FAILING)

        # by cause: the rotation on d1, d2, d4 (networks A, B, C); d1's interception; d3
        assert gauge(found, "pinwatch_failing_devices", cause="rotation_suspected") == 3
        assert gauge(found, "pinwatch_failing_networks", cause="rotation_suspected") == 3
        assert gauge(found, "pinwatch_failing_devices", cause="interception_suspected") == 1
        assert gauge(found, "pinwatch_failing_devices", cause="unknown") == 1
        assert gauge(found, "pinwatch_failing_networks", cause="unknown") == 1
        # all causes: four devices (d1 once, whatever its causes and versions), three networks;
        # the per-cause figures would add up to five devices and five networks
        assert gauge(found, "pinwatch_failing_devices_all_causes") == 4
        assert gauge(found, "pinwatch_failing_networks_all_causes") == 3
        # by version: 5.2.0 is d1 (after its upgrade) and d2; `other` is d3 and d4, one count
        assert gauge(found, "pinwatch_failing_devices_by_version", app_version="5.3.0") == 1
        assert gauge(found, "pinwatch_failing_devices_by_version", app_version="5.2.0") == 2
        assert gauge(found, "pinwatch_failing_networks_by_version", app_version="5.2.0") == 2
        assert gauge(found, "pinwatch_failing_devices_by_version", app_version="other") == 2
        assert gauge(found, "pinwatch_failing_networks_by_version", app_version="other") == 2
        # nothing for the report-only host, and versions labelled as the counter labels them
        assert not [k for k in found if ("host", REPORT_ONLY_HOST) in k[1]]
        counted = {
            s.labels["app_version"]
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "pinwatch_pin_validations_total"
            and s.labels["enforced"] == "true"
            and s.labels["result"] != "ok"
        }
        versions = {
            dict(labels)["app_version"]
            for name, labels in found
            if name == "pinwatch_failing_devices_by_version"
        }
        assert versions == counted == {"5.3.0", "5.2.0", "other"}

        # A second replica of the same group reads the same ClickHouse: it consumed none of
        # these reports, yet exports exactly the same figures under the same labels.
        replica = Consumer(settings, p.store)
        await replica.refresh_failing()
        assert samples(generate_latest(replica.metrics.registry).decode(), FAILING) == found
