"""A client's retried batch (same report ids, a second Kafka message) is counted once: in
`reports`, the rollups and /metrics, also when the retry arrives after a consumer restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from devstack.certs import CertificateAuthority
from devstack.clients import native_batch, nel_report, pin_validation, trustkit_ios
from pinwatch.settings import Settings
from tests.support.names import TEST_APP, TEST_HOST, TEST_KEY
from tests.support.pipeline import Pipeline, run_pipeline

PINS = "pinwatch_pin_validations_total"
MISMATCH = dict(
    app=TEST_APP,
    host=TEST_HOST,
    platform="ios",
    app_version="5.2.0",
    result="pin_mismatch",
    pin_match="none",
    enforced="true",
    cause="rotation_suspected",
)


async def _settled(p: Pipeline, n_duplicates: int, n_rows: int) -> None:
    """Wait until the consumer committed `n_duplicates` dropped retries and `n_rows` rows."""
    await p.wait_inserted(n_rows, timeout=60)
    for _ in range(300):
        if await p.metric("pinwatch_consumer_duplicate_reports_total") >= n_duplicates:
            break
        await asyncio.sleep(0.1)


async def test_a_retried_batch_is_counted_once_also_after_a_restart(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    settings = make_settings(batch_max_seconds=0.3)
    rotated = ca.chain("rotated")
    batch: dict[str, Any] = native_batch(
        [pin_validation(TEST_HOST, rotated, result="pin_mismatch", count=3)],
        app=TEST_APP,
        device="retrying-device",
    )
    trustkit = trustkit_ios(TEST_HOST, rotated, known_pins=[ca.pin("primary")], bundle_id=TEST_APP)

    async with run_pipeline(settings) as p:
        await p.post(batch)
        await p.post(batch)  # the client timed out after Kafka had the first copy
        await p.post(trustkit, path="/v1/reports/trustkit")
        await p.post(trustkit, path="/v1/reports/trustkit")
        await _settled(p, n_duplicates=2, n_rows=2)
        assert await p.metric("pinwatch_consumer_duplicate_reports_total") == 2
        assert await p.store.scalar("SELECT count() FROM {db}.reports") == 2
        assert await p.store.scalar("SELECT sum(count) FROM {db}.rollup_minute") == 3 + 1
        assert await p.metric(PINS, **MISMATCH) == 3 + 1

    # a new consumer process (empty memory) gets the same retry: ClickHouse remembers
    fresh = native_batch(
        [pin_validation(TEST_HOST, rotated, result="pin_mismatch", count=5)],
        app=TEST_APP,
        device="another-device",
    )
    async with run_pipeline(settings) as p:
        await p.post(batch)
        await p.post(fresh)
        await _settled(p, n_duplicates=1, n_rows=1)
        assert await p.metric("pinwatch_consumer_duplicate_reports_total") == 1
        assert await p.metric(PINS, **MISMATCH) == 5
        assert await p.store.scalar("SELECT count() FROM {db}.reports") == 3
        assert await p.store.scalar("SELECT sum(count) FROM {db}.rollup_minute") == 3 + 1 + 5


async def test_identical_nel_reports_from_two_browsers_both_count(
    make_settings: Callable[..., Settings],
) -> None:
    """NEL carries no device identity: the same failure seen by two browsers on one network in
    the same minute yields the same derived id, and both are real events, so NEL is deduplicated
    by Kafka offset only, never by id."""
    settings = make_settings(batch_max_seconds=0.3)
    delivery = [nel_report(f"https://{TEST_HOST}/v1/feed", "tls.cert.pinned_key_not_in_cert_chain")]
    async with run_pipeline(settings) as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as client:
            for _ in range(2):
                response = await client.post(
                    "/v1/reports/nel",
                    content=httpx.Request("POST", "/", json=delivery).content,
                    headers={
                        "X-Pinwatch-Key": TEST_KEY,
                        "Content-Type": "application/reports+json",
                    },
                )
                assert response.status_code == 202, response.text
        await p.wait_inserted(2, timeout=60)
        assert await p.store.scalar("SELECT count() FROM {db}.reports WHERE format = 'nel'") == 2
        assert await p.store.scalar("SELECT uniqExact(id) FROM {db}.reports") == 1
        assert await p.metric("pinwatch_consumer_duplicate_reports_total") == 0
