"""TrustKit, HPKP and NEL reports through the whole pipeline: POSTed as the clients send them
to the real ingest, through the real broker and consumer, into real chDB and /metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from devstack.certs import CertificateAuthority
from devstack.clients import hpkp_report, nel_report, trustkit_android, trustkit_ios, trustkit_json
from pinwatch.privacy import DeviceHasher
from pinwatch.settings import Settings
from tests.support.names import REPORT_ONLY_HOST, TEST_APP, TEST_HOST, TEST_KEY
from tests.support.pipeline import run_pipeline
from tests.support.polling import eventually

COLUMNS = (
    "id, format, kind, host, port, app_id, app_version, platform, os_version, device, "
    "client_network, result, pin_match, enforced, phase, cause, observed_pins, error, detail, "
    "count, toUnixTimestamp64Milli(received_at) AS received_ms, "
    "toUnixTimestamp64Milli(event_at) AS event_ms"
)


async def _post(url: str, path: str, body: Any, content_type: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post(
            path,
            params={"key": TEST_KEY},
            content=body if isinstance(body, bytes) else orjson.dumps(body),
            headers={"Content-Type": content_type},
        )
    assert response.status_code == 202, response.text
    return response


def _ms(ts: dt.datetime) -> int:
    return int(ts.timestamp() * 1000)


async def test_client_formats_are_stored_classified_and_counted(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    settings = make_settings()
    hasher = DeviceHasher(settings.device_hash_key)
    known = [ca.pin("primary"), ca.pin("backup")]
    ten_minutes_ago = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)
    ios = trustkit_ios(
        TEST_HOST, ca.chain("rotated"), known_pins=known, vendor_id="IOS-1", at=ten_minutes_ago
    )
    android = trustkit_android(
        TEST_HOST,
        ca.intercepted_chain(),
        known_pins=list(reversed(known)),
        enforce_pinning=False,
        vendor_id="android-1",
    )
    spki_failed = trustkit_ios(
        TEST_HOST, ca.chain("primary"), known_pins=known, validation_result=5, vendor_id="IOS-2"
    )
    hpkp = hpkp_report(REPORT_ONLY_HOST, ca.intercepted_chain(), known_pins=known)
    url = f"https://{TEST_HOST}/v1/feed"
    nel = [
        nel_report(url, "tls.cert.pinned_key_not_in_cert_chain", age_ms=30_000),
        nel_report(url, "ok", sampling_fraction=0.1),
        nel_report(url, "dns.name_not_resolved"),
        nel_report(url, "h2.protocol_error"),
        nel_report(url, "tcp.timed_out", sampling_fraction=0.5),
    ]

    async with run_pipeline(settings) as p:
        before = int(time.time() * 1000)
        for report in (ios, android, spki_failed):
            await _post(
                p.ingest_url, "/v1/reports/trustkit", trustkit_json(report), "application/json"
            )
        await _post(p.ingest_url, "/v1/reports/hpkp", hpkp, "application/json; charset=utf-8")
        await _post(p.ingest_url, "/v1/reports/nel", nel, "application/reports+json")
        after = int(time.time() * 1000)
        await p.wait_inserted(9, timeout=60)
        rows = await p.store.query_dicts(f"SELECT {COLUMNS} FROM {{db}}.reports")
        assert len(rows) == 9
        for row in rows:
            assert (row["app_id"], row["client_network"]) == (TEST_APP, "127.0.0.0/24")
            assert before <= row["received_ms"] <= after + 1000
        by = {(r["format"], r["platform"], r["result"], r["detail"]): r for r in rows}

        # TrustKit iOS: a rotated public chain, enforced -> the paging kind of failure
        row = by[("trustkit", "ios", "pin_mismatch", "")]
        assert row["observed_pins"] == ca.chain("rotated").pins
        assert (row["pin_match"], row["cause"], row["enforced"]) == (
            "none",
            "rotation_suspected",
            1,
        )
        assert (row["app_version"], row["os_version"], row["port"]) == ("5.2.0", "18.1.0", 443)
        assert row["device"] == hasher("IOS-1")
        assert row["event_ms"] == _ms(ten_minutes_ago)

        # TrustKit Android: a proxy's chain in report-only mode
        row = by[("trustkit", "android", "pin_mismatch", "")]
        assert row["observed_pins"] == ca.intercepted_chain().pins
        assert (row["pin_match"], row["cause"], row["enforced"]) == (
            "none",
            "interception_suspected",
            0,
        )
        assert row["device"] == hasher("android-1") and row["os_version"] == ""

        # TrustKit "could not hash the SPKI": a client fault, kept out of pin failures
        row = by[("trustkit", "ios", "", "trustkit.spki_hash_failed")]
        assert (row["kind"], row["error"], row["observed_pins"]) == ("network_error", "other", [])

        # HPKP: no enforcement flag in the format, so the host's phase (report_only) decides
        row = by[("hpkp", "web", "pin_mismatch", "")]
        assert (row["host"], row["phase"], row["enforced"]) == (REPORT_ONLY_HOST, "report_only", 0)
        assert (row["pin_match"], row["cause"]) == ("none", "interception_suspected")
        assert row["observed_pins"] == ca.intercepted_chain().pins

        # NEL: the pin failure has no chain, so no cause can be told; times from `age`
        row = by[("nel", "web", "pin_mismatch", "")]
        assert (row["pin_match"], row["cause"], row["enforced"]) == ("", "unknown", 1)
        assert row["received_ms"] - row["event_ms"] == 30_000
        assert by[("nel", "web", "ok", "")]["count"] == 10
        assert by[("nel", "web", "", "h2.protocol.error")]["error"] == "http"
        assert by[("nel", "web", "", "tcp.timed_out")]["count"] == 2

        # pin failures and network errors each on their own metric, moving by `count`
        pins = "pinwatch_pin_validations_total"
        errors = "pinwatch_network_errors_total"
        assert await p.metric(pins, app=TEST_APP, host=TEST_HOST, platform="ios") == 1
        assert (
            await p.metric(
                pins,
                host=TEST_HOST,
                platform="ios",
                result="pin_mismatch",
                pin_match="none",
                enforced="true",
                cause="rotation_suspected",
            )
            == 1
        )
        assert (
            await p.metric(
                pins, platform="android", enforced="false", cause="interception_suspected"
            )
            == 1
        )
        assert await p.metric(pins, host=REPORT_ONLY_HOST, platform="web", enforced="false") == 1
        assert await p.metric(pins, platform="web", result="pin_mismatch", cause="unknown") == 1
        assert await p.metric(pins, platform="web", result="ok") == 10
        assert await p.metric(pins) == 1 + 1 + 1 + 1 + 10
        assert await p.metric(errors, platform="ios", category="other") == 1
        assert await p.metric(errors, platform="web", category="dns") == 1
        assert await p.metric(errors, platform="web", category="http") == 1
        assert await p.metric(errors, platform="web", category="tcp") == 2
        assert await p.metric(errors) == 5

        # the original payloads are kept as sampled evidence
        raw = await p.store.query_dicts(
            "SELECT format, raw FROM {db}.evidence WHERE format IN ('trustkit', 'hpkp')"
        )
        payloads = {orjson.loads(r["raw"])["hostname"] for r in raw}
        assert payloads == {TEST_HOST, REPORT_ONLY_HOST}


async def test_a_retried_client_report_keeps_its_id(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    """TrustKit iOS retries the same file, a browser retries a NEL upload with a larger age:
    both copies carry the one id. The TrustKit id identifies the device's report, so the
    consumer counts the retry once; a NEL id cannot tell a retry from a second browser on the
    same network, so both NEL copies are kept (deduplicated by Kafka offset only)."""
    settings = make_settings()
    report = trustkit_ios(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    item = nel_report(f"https://{TEST_HOST}/", "tls.cert.pinned_key_not_in_cert_chain")
    async with run_pipeline(settings) as p:
        # NEL ids keep the event time to the minute: stay clear of a minute boundary
        assert await eventually(lambda: time.time() % 60 <= 55, timeout=10)
        first_sent = time.monotonic()
        for retry in (False, True):
            # the browser's age of a retried report grew by the time since the first upload
            age = 1_000 + (round((time.monotonic() - first_sent) * 1000) if retry else 0)
            await _post(
                p.ingest_url, "/v1/reports/trustkit", trustkit_json(report), "application/json"
            )
            await _post(
                p.ingest_url, "/v1/reports/nel", [{**item, "age": age}], "application/reports+json"
            )
        await p.wait_inserted(3, timeout=60)
        for _ in range(100):
            if await p.metric("pinwatch_consumer_duplicate_reports_total") >= 1:
                break
            await asyncio.sleep(0.1)
        assert await p.metric("pinwatch_consumer_duplicate_reports_total") == 1
        ids = await p.store.query(
            "SELECT format, uniqExact(id), count() FROM {db}.reports "
            "GROUP BY format ORDER BY format"
        )
        assert ids == [("nel", 1, 2), ("trustkit", 1, 1)]
