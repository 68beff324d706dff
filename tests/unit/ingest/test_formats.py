"""Unit tests of the client-format parsers (TrustKit iOS/Android, HPKP, NEL): each payload is
built by tests/support/payloads.py from real certificates, and the records are checked field by
field."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import os
from pathlib import Path

import orjson
import pytest

from devstack.certs import CertificateAuthority
from devstack.clients import (
    hpkp_pin,
    hpkp_report,
    nel_report,
    pem_android,
    pem_ios,
    trustkit_android,
    trustkit_ios,
)
from devstack.clients import pem_openssl as der_to_pem
from ingest.formats import FORMATS, hpkp, nel, trustkit
from ingest.formats.base import BadReport, IngestContext
from ingest.formats.pem import parse_chain
from pinwatch.policy import Policy, load_policy, parse_policy
from pinwatch.privacy import DeviceHasher
from pinwatch.record import Record
from pinwatch.settings import Settings
from pinwatch.vocabulary import ErrorCategory, Format, Kind, Result
from tests.support.names import TEST_APP, TEST_HOST

RECEIVED_MS = 1_795_000_000_000
NETWORK = "198.51.100.0/24"
HASHER = DeviceHasher("unit-test-key")


@pytest.fixture(scope="module")
def policy(policy_file: Path) -> Policy:
    return load_policy(policy_file)


@pytest.fixture
def context(policy: Policy, policy_file: Path):
    def make(policy_override: Policy | None = None, **settings: object) -> IngestContext:
        return IngestContext(
            app_id=TEST_APP,
            received_at_ms=RECEIVED_MS,
            client_network=NETWORK,
            hash_device=HASHER,
            settings=Settings(policy_file=policy_file, **settings),  # type: ignore[arg-type]
            policy=policy_override or policy,
        )

    return make


def one(parsed) -> Record:  # noqa: ANN001
    assert parsed.rejected == []
    assert len(parsed.records) == 1
    return parsed.records[0]


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


def test_every_client_format_is_registered_on_its_path():
    assert {name: spec.path for name, spec in FORMATS.items() if name != "native"} == {
        "trustkit": "/v1/reports/trustkit",
        "hpkp": "/v1/reports/hpkp",
        "nel": "/v1/reports/nel",
    }
    assert FORMATS["nel"].content_types[0] == "application/reports+json"


# --- PEM as each client writes it ------------------------------------------------------------


def test_pem_variants_are_what_the_clients_write(ca: CertificateAuthority):
    der = ca.chain("primary").der[0]
    ios = pem_ios(der)
    android = pem_android(der)
    assert "\r\n" in ios and ios.startswith("-----BEGIN CERTIFICATE-----\n")
    assert {len(line) for line in ios.split("\n")[1].split("\r")[:-1]} <= {64}
    assert "\r" not in android and android.endswith("-----END CERTIFICATE-----\n")
    assert len(android.split("\n")[1]) == 76
    # both decode to the very certificate, whose pin is the pinned key's
    for pem in (ios, android, der_to_pem(der)):
        (parsed,) = parse_chain([pem], "chain", max_cert_bytes=16_384)
        assert (parsed.der, parsed.pin) == (der, ca.pin("primary"))


# --- TrustKit --------------------------------------------------------------------------------


def test_trustkit_ios_rotation_report(ca: CertificateAuthority, context):
    chain = ca.chain("rotated")
    at = dt.datetime(2026, 11, 18, 8, 20, 1, tzinfo=dt.UTC)
    report = trustkit_ios(
        TEST_HOST,
        chain,
        known_pins=[ca.pin("primary"), ca.pin("backup")],
        vendor_id="6F1A2B3C-0000-4000-8000-000000000001",
        at=at,
    )
    record = one(trustkit.parse(report, context()))
    assert record == Record(
        id=record.id,
        kind=Kind.PIN_VALIDATION,
        format=Format.TRUSTKIT,
        app_id=TEST_APP,
        host=TEST_HOST,
        received_at_ms=RECEIVED_MS,
        event_at_ms=ms("2026-11-18T08:20:01+00:00"),
        app_version="5.2.0",
        platform="ios",
        os_version="18.1.0",
        device=HASHER("6F1A2B3C-0000-4000-8000-000000000001"),
        client_network=NETWORK,
        port=443,
        result=Result.PIN_MISMATCH,
        enforced=True,
        observed_pins=chain.pins,
        known_pins=[ca.pin("primary"), ca.pin("backup")],
        served_chain=chain.b64,
        # the payload as sent, but for the device id: kept only as its keyed hash
        raw=orjson.dumps({**report, "app-vendor-id": record.device}).decode(),
    )
    assert record.id.startswith("trustkit-") and len(record.id) == len("trustkit-") + 32
    assert "6F1A2B3C" not in record.device and "6F1A2B3C" not in record.raw


def test_trustkit_android_report(ca: CertificateAuthority, context):
    """76-column PEM, pins in another order, device-local time with a literal Z, and a served
    chain (the proxy's) that differs from nothing validated: the validated one is used."""
    served = ca.intercepted_chain()
    local = dt.datetime(2026, 11, 18, 9, 20, 1)  # device clock an hour ahead of UTC
    report = trustkit_android(
        TEST_HOST,
        served,
        known_pins=[ca.pin("backup"), ca.pin("primary")],
        validation_result=2,
        enforce_pinning=False,
        vendor_id="a0c5e2f4-android-install",
        local_time=local,
    )
    record = one(trustkit.parse(report, context()))
    assert record.platform == "android"
    assert record.os_version == ""
    assert record.result == Result.CHAIN_INVALID
    assert record.enforced is False
    assert record.known_pins == [ca.pin("backup"), ca.pin("primary")]
    assert record.observed_pins == served.pins
    assert record.served_chain == served.b64
    # kept as sent, but the trusted time is the arrival
    assert record.event_at_ms == ms("2026-11-18T09:20:01+00:00")
    assert record.received_at_ms == RECEIVED_MS
    assert record.device == HASHER("a0c5e2f4-android-install")


def test_trustkit_android_with_only_a_served_chain(ca: CertificateAuthority, context):
    chain = ca.chain("rotated")
    report = trustkit_android(TEST_HOST, chain, known_pins=[ca.pin("primary")])
    report["validated-certificate-chain"] = []
    record = one(trustkit.parse(report, context()))
    assert record.observed_pins == chain.pins


@pytest.mark.parametrize(
    ("validation_result", "kind", "result", "detail"),
    [
        (0, Kind.PIN_VALIDATION, Result.OK, ""),
        (1, Kind.PIN_VALIDATION, Result.PIN_MISMATCH, ""),
        (2, Kind.PIN_VALIDATION, Result.CHAIN_INVALID, ""),
        (3, Kind.NETWORK_ERROR, None, "trustkit.invalid_parameters"),
        (4, Kind.PIN_VALIDATION, Result.PIN_MISMATCH, ""),
        (5, Kind.NETWORK_ERROR, None, "trustkit.spki_hash_failed"),
    ],
)
def test_trustkit_validation_results(
    ca: CertificateAuthority, context, validation_result, kind, result, detail
):
    report = trustkit_ios(
        TEST_HOST,
        ca.chain("primary"),
        known_pins=[ca.pin("primary")],
        validation_result=validation_result,
    )
    record = one(trustkit.parse(report, context()))
    assert (record.kind, record.result, record.detail) == (kind, result, detail)
    if kind == Kind.NETWORK_ERROR:
        assert record.error == ErrorCategory.OTHER
        assert record.observed_pins == [] and record.enforced is None
    else:
        assert record.error is None


def test_trustkit_before_enforce_pinning_existed(ca: CertificateAuthority, context):
    report = trustkit_ios(
        TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")], enforce_pinning=None
    )
    del report["app-platform"], report["app-platform-version"], report["trustkit-version"]
    record = one(trustkit.parse(report, context()))
    assert record.enforced is None  # consumers fall back to the host's phase
    assert record.platform == "ios"


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("IOS", "ios"), ("TVOS", "tvos"), ("WATCHOS", "watchos"), ("MACOS", "macos"),
     ("VISIONOS", "other")],
)  # fmt: skip
def test_trustkit_platforms(ca: CertificateAuthority, context, platform, expected):
    report = trustkit_ios(
        TEST_HOST, ca.chain("primary"), known_pins=[ca.pin("primary")], platform=platform
    )
    assert one(trustkit.parse(report, context())).platform == expected


def test_trustkit_port_zero_uses_the_policy_port(ca: CertificateAuthority, context):
    policy = parse_policy(
        f"""
apps: [{{id: {TEST_APP}, ingest_keys: ["k-0123456789abcdef"]}}]
hosts:
  - host: pinwatch.test
    include_subdomains: true
    port: 8443
    pins:
      - {{sha256: "{ca.pin("primary")}", role: primary}}
      - {{sha256: "{ca.pin("backup")}", role: backup}}
"""
    )
    report = trustkit_ios(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    assert one(trustkit.parse(report, context(policy))).port == 8443
    # a host no policy covers: 443; a real port in the report: kept
    report["hostname"] = "elsewhere.example"
    assert one(trustkit.parse(report, context(policy))).port == 443
    report["port"] = 8080
    assert one(trustkit.parse(report, context(policy))).port == 8080


def test_trustkit_ids_are_stable_for_a_retry_and_distinct_per_device(
    ca: CertificateAuthority, context
):
    at = dt.datetime(2026, 11, 18, 8, 0, tzinfo=dt.UTC)
    chain = ca.chain("rotated")
    first = trustkit_ios(TEST_HOST, chain, known_pins=[ca.pin("primary")], vendor_id="A", at=at)
    retry = orjson.loads(orjson.dumps(first))
    other = trustkit_ios(TEST_HOST, chain, known_pins=[ca.pin("primary")], vendor_id="B", at=at)
    ids = [one(trustkit.parse(r, context())).id for r in (first, retry, other)]
    assert ids[0] == ids[1] != ids[2]


def test_trustkit_trusts_the_key_over_the_bundle_id(ca: CertificateAuthority, context):
    report = trustkit_ios(
        TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")], bundle_id="com.other.beta"
    )
    assert one(trustkit.parse(report, context())).app_id == TEST_APP


def test_trustkit_tolerates_unknown_fields_and_bounds_raw(ca: CertificateAuthority, context):
    report = trustkit_ios(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    report["some-future-field"] = {"nested": [1, 2, 3]}
    record = one(trustkit.parse(report, context(max_raw_payload_bytes=1024)))
    assert len(record.raw) == 1024
    assert record.raw.endswith("…[truncated]")
    assert record.observed_pins == ca.chain("rotated").pins


def _bad(parse, report, ctx) -> BadReport:  # noqa: ANN001
    with pytest.raises(BadReport) as caught:
        parse(report, ctx)
    return caught.value


def _random_der_as_pem() -> str:
    body = base64.b64encode(os.urandom(600)).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----"


@pytest.mark.parametrize(
    ("mutate", "field", "status", "problem"),
    [
        (lambda r: r.pop("hostname"), "hostname", 400, "required"),
        (lambda r: r.update(hostname=""), "hostname", 400, "required"),
        (lambda r: r.update(hostname=12), "hostname", 400, "must be a string"),
        (lambda r: r.update(hostname="api.example.com/path"), "hostname", 400, "not a hostname"),
        (lambda r: r.update(hostname="a" * 300), "hostname", 413, "at most 256"),
        (lambda r: r.pop("validation-result"), "validation-result", 400, "required"),
        (lambda r: r.update({"validation-result": "1"}), "validation-result", 400, "integer"),
        (lambda r: r.update({"validation-result": 9}), "validation-result", 400, "outside"),
        (lambda r: r.update({"enforce-pinning": "yes"}), "enforce-pinning", 400, "true or false"),
        (lambda r: r.update(port="443"), "port", 400, "integer"),
        (lambda r: r.update({"date-time": "yesterday"}), "date-time", 400, "ISO 8601"),
        (lambda r: r.update({"app-version": ["5"]}), "app-version", 400, "must be a string"),
        (
            lambda r: r.update({"validated-certificate-chain": "-----BEGIN CERTIFICATE-----"}),
            "validated-certificate-chain",
            400,
            "must be an array",
        ),
        (
            lambda r: r["validated-certificate-chain"].__setitem__(1, "MIIBIjANBgkqhkiG9w0BAQEF"),
            "validated-certificate-chain[1]",
            400,
            "not a PEM certificate",
        ),
        (
            lambda r: r["validated-certificate-chain"].__setitem__(
                0, "-----BEGIN CERTIFICATE-----\nMII$$$\n-----END CERTIFICATE-----"
            ),
            "validated-certificate-chain[0]",
            400,
            "not a PEM certificate",
        ),
        (
            lambda r: r["validated-certificate-chain"].__setitem__(
                0, "-----BEGIN CERTIFICATE-----\nMIIB=A\n-----END CERTIFICATE-----"
            ),
            "validated-certificate-chain[0]",
            400,
            "not valid base64",
        ),
        (
            lambda r: r["validated-certificate-chain"].__setitem__(0, _random_der_as_pem()),
            "validated-certificate-chain[0]",
            400,
            "not an X.509 certificate",
        ),
        (
            lambda r: r["validated-certificate-chain"].__setitem__(0, {"pem": "..."}),
            "validated-certificate-chain[0]",
            400,
            "PEM certificate string",
        ),
        (
            lambda r: r.update(
                {"validated-certificate-chain": r["validated-certificate-chain"] * 34}
            ),
            "validated-certificate-chain",
            413,
            "102 entries, at most 10",
        ),
        (
            lambda r: r["validated-certificate-chain"].__setitem__(
                0, r["validated-certificate-chain"][0] + " " * 20_000
            ),
            "validated-certificate-chain[0]",
            413,
            "at most 16384",
        ),
        (
            lambda r: r.update({"known-pins": ['pin-sha256="abc"']}),
            "known-pins[0]",
            400,
            "SHA-256",
        ),
        (
            lambda r: r["known-pins"].append('pin-sha1="2jmj7l5rSw0yVb/vlWAYkK/YBwk="'),
            "known-pins[1]",
            400,
            "pin-sha256",
        ),
        (
            lambda r: r["known-pins"].append(base64.b64encode(bytes(32)).decode()),
            "known-pins[1]",
            400,
            "pin-sha256",
        ),
        (lambda r: r["known-pins"].append(7), "known-pins[1]", 400, "must be a string"),
        (
            lambda r: r.update(
                {
                    "known-pins": [
                        hpkp_pin(base64.b64encode(bytes([i]) * 32).decode()) for i in range(17)
                    ]
                }
            ),  # noqa: E501
            "known-pins",
            413,
            "17 entries, at most 16",
        ),
    ],
)
def test_trustkit_bad_input_names_the_field(
    ca: CertificateAuthority, context, mutate, field, status, problem
):
    report = trustkit_ios(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    mutate(report)
    error = _bad(trustkit.parse, report, context())
    assert (error.field, error.status) == (field, status)
    assert problem in error.problem


@pytest.mark.parametrize("body", [[], "report", 42, None])
def test_trustkit_body_must_be_an_object(context, body):
    error = _bad(trustkit.parse, body, context())
    assert error.field == "body" and "JSON object" in error.problem


# --- HPKP ------------------------------------------------------------------------------------


def test_hpkp_interception_report(ca: CertificateAuthority, context):
    chain = ca.intercepted_chain()
    at = dt.datetime(2026, 11, 18, 8, 25, 30, 250000, tzinfo=dt.UTC)
    report = hpkp_report(TEST_HOST, chain, known_pins=[ca.pin("primary"), ca.pin("backup")], at=at)
    record = one(hpkp.parse(report, context()))
    assert record == Record(
        id=record.id,
        kind=Kind.PIN_VALIDATION,
        format=Format.HPKP,
        app_id=TEST_APP,
        host=TEST_HOST,
        received_at_ms=RECEIVED_MS,
        event_at_ms=ms("2026-11-18T08:25:30.250+00:00"),
        platform="web",
        client_network=NETWORK,
        port=443,
        result=Result.PIN_MISMATCH,
        enforced=None,
        observed_pins=chain.pins,
        known_pins=[ca.pin("primary"), ca.pin("backup")],
        served_chain=chain.b64,
        raw=orjson.dumps(report).decode(),
    )
    assert record.id.startswith("hpkp-")


def test_hpkp_known_pins_parse_leniently(ca: CertificateAuthority, context):
    """RFC 7469's example quotes with both kinds of quote."""
    report = hpkp_report(TEST_HOST, ca.chain("rotated"), known_pins=[])
    report["known-pins"] = [
        f"pin-sha256='{ca.pin('primary')}'",
        f'pin-sha256="{ca.pin("backup")}"',
        f"  PIN-SHA256 = '{ca.pin('primary')}' ",
    ]
    record = one(hpkp.parse(report, context()))
    assert record.known_pins == [ca.pin("primary"), ca.pin("backup")]


def test_hpkp_uses_the_served_chain_when_nothing_was_validated(ca: CertificateAuthority, context):
    chain = ca.chain("rotated")
    report = hpkp_report(TEST_HOST, chain, known_pins=[ca.pin("primary")], port=0)
    report["validated-certificate-chain"] = []
    record = one(hpkp.parse(report, context()))
    assert record.observed_pins == chain.pins
    assert record.port == 443


def test_hpkp_missing_hostname_is_named(ca: CertificateAuthority, context):
    report = hpkp_report(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    del report["hostname"]
    assert _bad(hpkp.parse, report, context()).field == "hostname"


# --- NEL -------------------------------------------------------------------------------------

URL = "https://API.pinwatch.test/v1/items?page=2"


@pytest.mark.parametrize(
    ("error_type", "kind", "result", "category", "detail"),
    [
        ("tls.cert.pinned_key_not_in_cert_chain", Kind.PIN_VALIDATION, Result.PIN_MISMATCH,
         None, ""),
        ("ok", Kind.PIN_VALIDATION, Result.OK, None, ""),
        ("dns.name_not_resolved", Kind.NETWORK_ERROR, None, ErrorCategory.DNS,
         "dns.name_not_resolved"),
        ("tcp.timed_out", Kind.NETWORK_ERROR, None, ErrorCategory.TCP, "tcp.timed_out"),
        ("tls.cert.authority_invalid", Kind.NETWORK_ERROR, None, ErrorCategory.TLS,
         "tls.cert.authority_invalid"),
        ("tls.protocol.error", Kind.NETWORK_ERROR, None, ErrorCategory.TLS,
         "tls.protocol.error"),
        ("http.response.invalid.empty", Kind.NETWORK_ERROR, None, ErrorCategory.HTTP,
         "http.response.invalid.empty"),
        ("h2.protocol_error", Kind.NETWORK_ERROR, None, ErrorCategory.HTTP,
         "h2.protocol.error"),
        ("H2.Protocol.Error", Kind.NETWORK_ERROR, None, ErrorCategory.HTTP,
         "h2.protocol.error"),
        ("h3.protocol.error", Kind.NETWORK_ERROR, None, ErrorCategory.HTTP,
         "h3.protocol.error"),
        ("h2.ping_failed", Kind.NETWORK_ERROR, None, ErrorCategory.HTTP, "h2.ping_failed"),
        ("abandoned", Kind.NETWORK_ERROR, None, ErrorCategory.OTHER, "abandoned"),
        ("unknown", Kind.NETWORK_ERROR, None, ErrorCategory.OTHER, "unknown"),
    ],
)  # fmt: skip
def test_nel_types(context, error_type, kind, result, category, detail):
    record = one(nel.parse([nel_report(URL, error_type, age_ms=61_000)], context()))
    assert (record.kind, record.result, record.error, record.detail) == (
        kind,
        result,
        category,
        detail,
    )
    assert record.enforced is (True if result == Result.PIN_MISMATCH else None)
    assert record.observed_pins == []
    assert (record.host, record.port, record.platform) == ("api.pinwatch.test", 443, "web")
    assert record.event_at_ms == RECEIVED_MS - 61_000
    assert record.received_at_ms == RECEIVED_MS
    assert record.app_id == TEST_APP and record.client_network == NETWORK


def test_nel_http_error_keeps_the_status(context):
    item = nel_report(URL, "http.error", status_code=503)
    record = one(nel.parse([item], context()))
    assert (record.error, record.detail) == (ErrorCategory.HTTP, "http.error 503")
    assert orjson.loads(record.raw) == item


def test_nel_sampling_fraction_weights_the_count(context):
    items = [
        nel_report(URL, "ok", sampling_fraction=0.01),
        nel_report(URL, "tcp.reset", sampling_fraction=0.5),
        nel_report(URL, "tls.cert.pinned_key_not_in_cert_chain", sampling_fraction=1.0),
        nel_report("http://plain.pinwatch.test:8080/", "dns.failed", sampling_fraction=0),
    ]
    records = nel.parse(items, context()).records
    assert [r.count for r in records] == [100, 2, 1, 1]
    assert records[3].port == 8080


def test_nel_bad_items_are_rejected_while_good_ones_flow(context):
    good = nel_report(URL, "tls.cert.pinned_key_not_in_cert_chain")
    no_body_type = nel_report(URL, "ok")
    del no_body_type["body"]["type"]
    items = [
        good,
        "not an object",
        {**good, "url": None},
        {**good, "url": "https:///no-host"},
        {**good, "url": "ftp://files.pinwatch.test/"},
        {**good, "type": "csp-violation"},
        {**good, "age": -5},
        {**good, "age": "1200"},
        {**good, "body": []},
        no_body_type,
        nel_report(URL, "tls.cert.$$$"),
        nel_report(URL, "ok", sampling_fraction=2.0),
        nel_report(URL, "dns.unreachable"),
    ]
    parsed = nel.parse(items, context())
    assert [r.detail or r.result for r in parsed.records] == [
        Result.PIN_MISMATCH,
        "dns.unreachable",
    ]
    assert [(r.index, r.field) for r in parsed.rejected] == [
        (1, "[1]"),
        (2, "[2].url"),
        (3, "[3].url"),
        (4, "[4].url"),
        (5, "[5].type"),
        (6, "[6].age"),
        (7, "[7].age"),
        (8, "[8].body"),
        (9, "[9].body.type"),
        (10, "[10].body.type"),
        (11, "[11].body.sampling_fraction"),
    ]
    assert all(r.problem for r in parsed.rejected)


def test_nel_batch_limits(context):
    items = [nel_report(URL, "ok")] * 10_000
    error = _bad(nel.parse, items, context())
    assert (error.field, error.status) == ("body", 413)
    assert "10000 reports, at most 1000" in error.problem
    assert _bad(nel.parse, {"age": 1}, context()).field == "body"


def test_nel_ids_survive_a_retry_with_a_larger_age(context):
    item = nel_report(URL, "tls.cert.pinned_key_not_in_cert_chain", age_ms=2_000)
    first = one(nel.parse([item], context())).id
    # the same report uploaded again 30 s later: the browser's age grew by 30 s too
    later = dataclasses.replace(context(), received_at_ms=RECEIVED_MS + 30_000)
    retried = one(nel.parse([{**item, "age": 32_000}], later)).id
    different = one(nel.parse([nel_report(URL, "tls.cert.pinned_key_not_in_cert_chain",
                                          elapsed_time=99)], context())).id  # fmt: skip
    assert first == retried != different


WEIRD: list[object] = [None, True, -1, 0.5, 1e308, "", "x" * 5000, [], {}, [None], {"a": []}]


def test_wrong_shapes_anywhere_are_bad_reports_not_crashes(ca: CertificateAuthority, context):
    """Every field of every format replaced by every wrong shape: the parser either accepts
    it or raises BadReport (never another exception, which the HTTP layer would have to hide)."""
    chain = ca.chain("rotated")
    cases = [
        (trustkit.parse, trustkit_ios(TEST_HOST, chain, known_pins=[ca.pin("primary")])),
        (trustkit.parse, trustkit_android(TEST_HOST, chain, known_pins=[ca.pin("primary")])),
        (hpkp.parse, hpkp_report(TEST_HOST, chain, known_pins=[ca.pin("primary")])),
    ]
    outcomes = {"accepted": 0, "refused": 0}
    for parse, base in cases:
        for key in base:
            for value in WEIRD:
                try:
                    parse({**base, key: value}, context())
                    outcomes["accepted"] += 1
                except BadReport:
                    outcomes["refused"] += 1
    item = nel_report("https://api.pinwatch.test/", "tcp.reset")
    for key in [*item, *(f"body.{k}" for k in item["body"])]:
        for value in WEIRD:
            mangled = orjson.loads(orjson.dumps(item))
            if key.startswith("body."):
                mangled["body"][key[5:]] = value
            else:
                mangled[key] = value
            parsed = nel.parse([mangled], context())
            outcomes["accepted" if parsed.records else "refused"] += 1
    assert outcomes["accepted"] > 0 and outcomes["refused"] > 0


@pytest.mark.parametrize(
    ("date_time", "event_at"),
    [
        (None, None),  # iOS writes NSNull when its formatter fails
        ("1970-01-01T00:00:05Z", None),  # a device clock reset to the epoch
        ("2026-11-18T08:20:01+0100", ms("2026-11-18T07:20:01+00:00")),
        ("2026-11-18T08:20:01.250Z", ms("2026-11-18T08:20:01.250+00:00")),
    ],
)
def test_trustkit_date_times(ca: CertificateAuthority, context, date_time, event_at):
    report = trustkit_ios(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    report["date-time"] = date_time
    record = one(trustkit.parse(report, context()))
    assert (record.event_at_ms, record.received_at_ms) == (event_at, RECEIVED_MS)


@pytest.mark.parametrize(
    ("sent", "host"),
    [
        ("API.PinWatch.test.", "api.pinwatch.test"),
        ("xn--bcher-kva.pinwatch.test", "xn--bcher-kva.pinwatch.test"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("203.0.113.5", "203.0.113.5"),
        ("cafe.be:443", None),
        ("api.pinwatch.test/v1", None),
        ("two words", None),
    ],
)
def test_hostnames(ca: CertificateAuthority, context, sent, host):
    report = hpkp_report(TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")])
    report["hostname"] = sent
    if host is None:
        assert _bad(hpkp.parse, report, context()).field == "hostname"
    else:
        assert one(hpkp.parse(report, context())).host == host


def test_nel_long_urls_are_fine_but_not_endless(context):
    long_url = URL + "&q=" + "x" * 2000
    assert one(nel.parse([nel_report(long_url, "ok")], context())).host == "api.pinwatch.test"
    endless = URL + "&q=" + "x" * 40_000
    (rejection,) = nel.parse([nel_report(endless, "ok")], context()).rejected
    assert rejection.field == "[0].url" and "at most 32768" in rejection.problem
