"""TrustKit, HPKP and NEL reports sent over HTTP to the real ingest (uvicorn, real Kafka): what
is accepted is on the topic as the normalized record, what is refused is answered with the field
named and puts nothing on the topic."""

from __future__ import annotations

import base64
import gzip
import random
from typing import Any

import orjson
import pytest

from devstack.certs import CertificateAuthority
from devstack.clients import hpkp_report, nel_report, trustkit_android, trustkit_ios, trustkit_json
from pinwatch.privacy import DeviceHasher
from pinwatch.vocabulary import ErrorCategory, Format, Kind, Result
from tests.support.ingest import read_records
from tests.support.names import TEST_APP, TEST_HOST, TEST_KEY

LOOPBACK = "127.0.0.0/24"


async def test_trustkit_ios_and_android_reports_land_normalized(
    ingest: Any, ca: CertificateAuthority
) -> None:
    running = await ingest()
    known = [ca.pin("primary"), ca.pin("backup")]
    ios = trustkit_ios(TEST_HOST, ca.chain("rotated"), known_pins=known, vendor_id="IOS-VENDOR")
    android = trustkit_android(
        TEST_HOST,
        ca.intercepted_chain(),
        known_pins=list(reversed(known)),
        validation_result=2,
        enforce_pinning=False,
        vendor_id="android-install",
    )
    for report in (ios, android):
        response = await running.send("/v1/reports/trustkit", trustkit_json(report))
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 1, "rejected": []}

    records = sorted(await read_records(running.settings, min_records=2), key=lambda r: r.platform)
    hasher = DeviceHasher(running.settings.device_hash_key)
    assert [(r.platform, r.result, r.enforced) for r in records] == [
        ("android", Result.CHAIN_INVALID, False),
        ("ios", Result.PIN_MISMATCH, True),
    ]
    assert records[1].observed_pins == ca.chain("rotated").pins
    assert records[0].observed_pins == ca.intercepted_chain().pins
    assert [r.device for r in records] == [hasher("android-install"), hasher("IOS-VENDOR")]
    for record in records:
        assert (record.format, record.app_id, record.host, record.port) == (
            Format.TRUSTKIT,
            TEST_APP,
            TEST_HOST,
            443,
        )
        assert record.client_network == LOOPBACK
        assert orjson.loads(record.raw)["hostname"] == TEST_HOST


async def test_hpkp_as_chrome_sent_it(ingest: Any, ca: CertificateAuthority) -> None:
    running = await ingest()
    report = hpkp_report(TEST_HOST, ca.intercepted_chain(), known_pins=[ca.pin("primary")])
    response = await running.send(
        "/v1/reports/hpkp", report, content_type="application/json; charset=utf-8"
    )
    assert response.status_code == 202, response.text
    (record,) = await read_records(running.settings, min_records=1)
    assert (record.format, record.platform, record.result, record.enforced) == (
        Format.HPKP,
        "web",
        Result.PIN_MISMATCH,
        None,
    )
    assert record.observed_pins == ca.intercepted_chain().pins
    assert record.app_id == TEST_APP


async def test_nel_batch_accepts_good_items_and_counts_bad_ones(ingest: Any) -> None:
    running = await ingest()
    url = f"https://{TEST_HOST}/v1/feed"
    items = [
        nel_report(url, "tls.cert.pinned_key_not_in_cert_chain"),
        nel_report(url, "ok", sampling_fraction=0.1),
        {"age": 10, "type": "network-error", "url": "not a url", "body": {"type": "ok"}},
        nel_report(url, "dns.name_not_resolved"),
        nel_report(url, "tcp.timed_out", sampling_fraction="half"),  # type: ignore[arg-type]
    ]
    response = await running.send("/v1/reports/nel", items, "application/reports+json")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 3
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [
        (2, "[2].url"),
        (4, "[4].body.sampling_fraction"),
    ]
    records = await read_records(running.settings, min_records=3)
    assert [(r.kind, r.result, r.error, r.count) for r in records] == [
        (Kind.PIN_VALIDATION, Result.PIN_MISMATCH, None, 1),
        (Kind.PIN_VALIDATION, Result.OK, None, 10),
        (Kind.NETWORK_ERROR, None, ErrorCategory.DNS, 1),
    ]
    assert all(r.format == Format.NEL and r.host == TEST_HOST for r in records)
    rejected = await running.metric(
        "pinwatch_ingest_rejected_total", format="nel", reason="bad_item"
    )
    assert rejected == 2
    assert await running.metric("pinwatch_ingest_reports_total", format="nel") == 3


async def test_nel_with_only_bad_items_is_a_400(ingest: Any) -> None:
    running = await ingest()
    response = await running.send(
        "/v1/reports/nel", [{"type": "network-error"}], "application/reports+json"
    )
    assert response.status_code == 400
    assert response.json()["field"] == "[0].url"


def _oversized_chain(ca: CertificateAuthority) -> dict[str, Any]:
    report = trustkit_ios(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    report["validated-certificate-chain"] = report["validated-certificate-chain"] * 34
    return report


def _not_x509(ca: CertificateAuthority) -> dict[str, Any]:
    report = trustkit_ios(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    noise = base64.b64encode(random.Random(7).randbytes(700)).decode()
    report["validated-certificate-chain"][1] = (
        f"-----BEGIN CERTIFICATE-----\n{noise}\n-----END CERTIFICATE-----"
    )
    return report


def _bad_pin(ca: CertificateAuthority) -> dict[str, Any]:
    return hpkp_report(TEST_HOST, ca.chain("rotated"), known_pins=["c2hvcnQ="])


def _no_hostname(ca: CertificateAuthority) -> dict[str, Any]:
    report = trustkit_android(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    del report["hostname"]
    return report


def _chain_as_string(ca: CertificateAuthority) -> dict[str, Any]:
    report = hpkp_report(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    report["served-certificate-chain"] = report["served-certificate-chain"][0]
    return report


@pytest.mark.parametrize(
    ("path", "build", "status", "field"),
    [
        ("/v1/reports/trustkit", _oversized_chain, 413, "validated-certificate-chain"),
        ("/v1/reports/trustkit", _not_x509, 400, "validated-certificate-chain[1]"),
        ("/v1/reports/hpkp", _bad_pin, 400, "known-pins[0]"),
        ("/v1/reports/trustkit", _no_hostname, 400, "hostname"),
        ("/v1/reports/hpkp", _chain_as_string, 400, "served-certificate-chain"),
        ("/v1/reports/trustkit", lambda ca: [1, 2], 400, "body"),
    ],
)
async def test_bad_reports_are_refused_naming_the_field(
    ingest: Any, ca: CertificateAuthority, path: str, build: Any, status: int, field: str
) -> None:
    running = await ingest()
    response = await running.send(path, build(ca))
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    good = hpkp_report(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    assert (await running.send("/v1/reports/hpkp", good)).status_code == 202
    # only the good one reached Kafka
    assert [r.format for r in await read_records(running.settings, min_records=1)] == [Format.HPKP]


async def test_ten_thousand_nel_items_are_a_413_naming_the_limit(ingest: Any) -> None:
    # room in the body limits, so it is the batch limit that answers
    running = await ingest(max_body_bytes=8_000_000, max_decompressed_bytes=16_000_000)
    items = [nel_report(f"https://{TEST_HOST}/", "ok")] * 10_000
    body = gzip.compress(orjson.dumps(items))
    response = await running.send(
        "/v1/reports/nel", body, "application/reports+json", **{"Content-Encoding": "gzip"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["field"] == "body"
    assert "10000 reports" in response.json()["detail"]


async def test_mangled_reports_never_get_a_500(ingest: Any, ca: CertificateAuthority) -> None:
    """Every field of every format replaced by values of the wrong shape: each answer is a
    202, 400 or 413, never a server error."""
    running = await ingest()
    weird: list[Any] = [None, True, -1, 1e308, "", "x" * 5000, [], {}, [None], {"a": []}]
    bases = {
        "/v1/reports/trustkit": trustkit_ios(
            TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")]
        ),
        "/v1/reports/hpkp": hpkp_report(
            TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")]
        ),
    }
    statuses = set()
    rng = random.Random(3)
    for path, base in bases.items():
        for key in base:
            for value in rng.sample(weird, 4):
                response = await running.send(path, {**base, key: value})
                statuses.add(response.status_code)
                assert response.status_code in (202, 400, 413), (path, key, value, response.text)
    nel_item = nel_report(f"https://{TEST_HOST}/", "tcp.reset")
    for key in [*nel_item, *(f"body.{k}" for k in nel_item["body"])]:
        for value in rng.sample(weird, 4):
            item = orjson.loads(orjson.dumps(nel_item))
            if key.startswith("body."):
                item["body"][key[5:]] = value
            else:
                item[key] = value
            response = await running.send("/v1/reports/nel", [item], "application/reports+json")
            statuses.add(response.status_code)
            assert response.status_code in (202, 400, 413), (key, value, response.text)
    assert {400, 202} <= statuses


async def test_browsers_cors_preflight_is_answered(ingest: Any) -> None:
    """Chrome sends NEL reports to a collector on another origin only after this preflight
    succeeds (2xx, Allow-Origin * or the origin, Allow-Headers * or content-type)."""
    running = await ingest()
    response = await running.client.options(
        "/v1/reports/nel",
        params={"key": TEST_KEY},
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert 200 <= response.status_code < 300
    assert response.headers["access-control-allow-origin"] == "*"
    assert "content-type" in response.headers["access-control-allow-headers"].split(", ")
