"""Ingest against the real broker: what is accepted is on the topic exactly, what is refused is
answered precisely and puts nothing on the topic."""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from devstack.certs import CertificateAuthority
from devstack.clients import native_batch, network_error, pin_validation
from pinwatch.privacy import DeviceHasher
from pinwatch.record import Record, decode_batch
from pinwatch.vocabulary import ErrorCategory, Format, Kind, Result
from tests.support.ingest import RunningIngest, read_messages, read_records
from tests.support.names import OTHER_APP, OTHER_KEY, TEST_APP, TEST_HOST, TEST_KEY
from tests.support.payloads import unusable_key_certificates

KEY = {"X-Pinwatch-Key": TEST_KEY}
JSON = {"Content-Type": "application/json"}


def _ms(iso_text: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp() * 1000)


async def test_batch_lands_on_topic_exactly(ingest: Any, ca: CertificateAuthority) -> None:
    running = await ingest()
    chain = ca.chain("rotated")
    reports = [
        pin_validation(TEST_HOST, chain, result="pin_mismatch", enforced=True),
        pin_validation(
            TEST_HOST, ca.chain(), result="ok", enforced=False, count=240, with_chain=False
        ),
        network_error(TEST_HOST, "timeout", count=3),
    ]
    body = native_batch(reports, app=TEST_APP, device="install-42", network="cellular")
    before = int(time.time() * 1000)
    response = await running.post(body)
    after = int(time.time() * 1000)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 3, "rejected": []}

    got = await read_records(running.settings, min_records=3)
    assert len(got) == 3
    received = got[0].received_at_ms
    assert before <= received <= after
    device = DeviceHasher(running.settings.device_hash_key)("install-42")
    common: dict[str, Any] = {
        "format": Format.NATIVE,
        "app_id": TEST_APP,
        "received_at_ms": received,
        "sent_at_ms": _ms(body["sent_at"]),
        "app_version": "5.2.0",
        "platform": "ios",
        "os_version": "18.1",
        "device": device,
        "network": "cellular",
        "client_network": "127.0.0.0/24",
        "host": TEST_HOST,
        "port": 443,
    }
    expected = [
        Record(
            id=reports[0]["id"],
            kind=Kind.PIN_VALIDATION,
            event_at_ms=_ms(reports[0]["at"]),
            result=Result.PIN_MISMATCH,
            enforced=True,
            observed_pins=chain.pins,
            served_chain=chain.b64,
            count=1,
            **common,
        ),
        Record(
            id=reports[1]["id"],
            kind=Kind.PIN_VALIDATION,
            event_at_ms=_ms(reports[1]["at"]),
            result=Result.OK,
            enforced=False,
            observed_pins=ca.chain().pins,
            count=240,
            **common,
        ),
        Record(
            id=reports[2]["id"],
            kind=Kind.NETWORK_ERROR,
            event_at_ms=_ms(reports[2]["at"]),
            error=ErrorCategory.TIMEOUT,
            detail="NSURLErrorTimedOut",
            count=3,
            **common,
        ),
    ]
    assert sorted(got, key=lambda r: r.id) == sorted(expected, key=lambda r: r.id)
    assert "install-42" not in orjson.dumps(got).decode()  # the raw device id never reaches Kafka


async def test_key_in_query_and_gzip_body(ingest: Any) -> None:
    running = await ingest()
    body = native_batch([network_error(TEST_HOST, "dns")], app=TEST_APP)
    response = await running.client.post(
        "/v1/reports",
        params={"key": TEST_KEY},
        content=gzip.compress(orjson.dumps(body)),
        headers={"Content-Type": "application/json; charset=utf-8", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 202, response.text
    got = await read_records(running.settings, min_records=1)
    assert [r.id for r in got] == [body["reports"][0]["id"]]
    assert got[0].error == ErrorCategory.DNS


async def test_duplicate_report_id_is_accepted_and_carried(ingest: Any) -> None:
    running = await ingest()
    report = network_error(TEST_HOST, "tls")
    for _ in range(2):
        response = await running.post(native_batch([report], app=TEST_APP, device="same-device"))
        assert response.status_code == 202
    messages = await read_messages(running.settings, min_records=2)
    records = [r for _, value in messages for r in decode_batch(value)]
    assert [r.id for r in records] == [report["id"], report["id"]]
    # one device's retries land in one partition, so a per-partition dedup window sees both
    assert len({partition for partition, _ in messages}) == 1


def _bad(
    mutate: Callable[[dict[str, Any]], Any], ca_chain: bool = False
) -> Callable[[CertificateAuthority], Any]:
    def build(ca: CertificateAuthority) -> Any:
        body = native_batch(
            [
                pin_validation(TEST_HOST, ca.chain(), result="pin_mismatch"),
                network_error(TEST_HOST),
            ],
            app=TEST_APP,
        )
        return mutate(body)

    return build


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def mutate(body: dict[str, Any]) -> dict[str, Any]:
        target: Any = body
        parts = path.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last = parts[-1]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
        return body

    return mutate


_DELETE = object()
_BIG = "x" * 300  # over max_string_length (256)


# (name, body builder, status, error code, field)
BAD_INPUT = [
    ("not_json", lambda ca: b'{"app": ', 400, "bad_json", None),
    ("json_not_object", lambda ca: b"[1, 2]", 400, "bad_report", "body"),
    ("wrong_type_count", _bad(_set("reports.0.count", "5")), 400, "bad_report", "reports[0].count"),
    (
        "wrong_type_enforced",
        _bad(_set("reports.0.enforced", "yes")),
        400,
        "bad_report",
        "reports[0].enforced",
    ),
    ("missing_host", _bad(_set("reports.1.host", _DELETE)), 400, "bad_report", "reports[1].host"),
    ("missing_reports", _bad(_set("reports", _DELETE)), 400, "bad_report", "reports"),
    ("missing_app", _bad(_set("app", _DELETE)), 400, "bad_report", "app"),
    (
        "unknown_type",
        _bad(_set("reports.1.type", "dns_failure")),
        400,
        "bad_report",
        "reports[1].type",
    ),
    (
        "unknown_result",
        _bad(_set("reports.0.result", "maybe")),
        400,
        "bad_report",
        "reports[0].result",
    ),
    (
        "unknown_error",
        _bad(_set("reports.1.error", "cosmic_ray")),
        400,
        "bad_report",
        "reports[1].error",
    ),
    (
        "bad_pin",
        _bad(_set("reports.0.observed_pins.0", "not-a-pin")),
        400,
        "bad_report",
        "reports[0].observed_pins[0]",
    ),
    (
        "chain_not_base64",
        _bad(_set("reports.0.served_chain.1", "%%%")),
        400,
        "bad_report",
        "reports[0].served_chain[1]",
    ),
    (
        "chain_not_x509",
        _bad(_set("reports.0.served_chain.0", "aGVsbG8gd29ybGQ=")),
        400,
        "bad_report",
        "reports[0].served_chain[0]",
    ),
    *(
        (
            variant,
            lambda ca, variant=variant: _set(
                "reports.0.served_chain.0",
                base64.b64encode(unusable_key_certificates(ca.chain().certs[0])[variant]).decode(),
            )(_bad(lambda b: b)(ca)),
            400,
            "bad_report",
            "reports[0].served_chain[0]",
        )
        for variant in ("unknown_key_algorithm", "point_off_curve")
    ),
    ("bad_port", _bad(_set("reports.1.port", 70000)), 400, "bad_report", "reports[1].port"),
    ("zero_count", _bad(_set("reports.1.count", 0)), 400, "bad_report", "reports[1].count"),
    ("other_apps_id", _bad(_set("app.id", OTHER_APP)), 400, "bad_report", "app.id"),
    ("empty_reports", _bad(_set("reports", [])), 400, "bad_report", "reports"),
    # limits (settings defaults: 16 pins, 10 certificates, 256 characters)
    (
        "too_many_pins",
        _bad(_set("reports.0.observed_pins", ["A" * 43 + "="] * 17)),
        413,
        "too_large",
        "reports[0].observed_pins",
    ),
    (
        "too_many_certificates",
        lambda ca: _set("reports.0.served_chain", ca.chain().b64 * 4)(_bad(lambda b: b)(ca)),
        413,
        "too_large",
        "reports[0].served_chain",
    ),
    (
        "certificate_too_large",
        _bad(_set("reports.0.served_chain.0", "A" * 30_000)),
        413,
        "too_large",
        "reports[0].served_chain[0]",
    ),
    (
        "string_too_long",
        _bad(_set("reports.1.detail", _BIG)),
        413,
        "too_large",
        "reports[1].detail",
    ),
    ("host_too_long", _bad(_set("reports.1.host", _BIG)), 413, "too_large", "reports[1].host"),
]


@pytest.mark.parametrize(
    "name, build, status, error, field", BAD_INPUT, ids=[row[0] for row in BAD_INPUT]
)
async def test_bad_input_is_refused_and_named(
    ingest: Any,
    ca: CertificateAuthority,
    name: str,
    build: Any,
    status: int,
    error: str,
    field: str | None,
) -> None:
    running = await ingest()
    response = await running.post(build(ca))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["field"] == field
    assert body["detail"]
    await _only_the_next_good_request_lands(running)


async def _only_the_next_good_request_lands(running: RunningIngest) -> None:
    """Refused requests put nothing on the topic: after one good request, it alone is there."""
    good = native_batch([network_error(TEST_HOST)], app=TEST_APP)
    assert (await running.post(good)).status_code == 202
    got = await read_records(running.settings, min_records=1, within=10)
    assert [r.id for r in got] == [good["reports"][0]["id"]]


async def test_too_many_reports_per_batch(ingest: Any) -> None:
    running = await ingest(max_reports_per_batch=5)
    body = native_batch([network_error(TEST_HOST) for _ in range(6)], app=TEST_APP)
    response = await running.post(body)
    assert response.status_code == 413
    assert response.json()["field"] == "reports"
    assert "5" in response.json()["detail"]
    await _only_the_next_good_request_lands(running)


@pytest.mark.parametrize(
    "headers, params, detail",
    [
        ({"X-Pinwatch-Key": ""}, None, "missing"),
        ({"X-Pinwatch-Key": "nope-" * 5}, None, "unknown"),
        ({"X-Pinwatch-Key": ""}, {"key": "wrong-key-0123456789"}, "unknown"),
    ],
    ids=["missing", "unknown_header", "unknown_query"],
)
async def test_missing_or_unknown_key_is_401(
    ingest: Any, headers: dict[str, str], params: dict[str, str] | None, detail: str
) -> None:
    running = await ingest()
    body = native_batch([network_error(TEST_HOST)], app=TEST_APP)
    response = await running.post(body, headers=headers, params=params)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert detail in response.json()["detail"]
    await _only_the_next_good_request_lands(running)


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "text/plain"}, {"Content-Type": ""}, {"Content-Encoding": "br"}],
    ids=["text_plain", "no_content_type", "brotli"],
)
async def test_unsupported_media_is_415(ingest: Any, headers: dict[str, str]) -> None:
    running = await ingest()
    body = native_batch([network_error(TEST_HOST)], app=TEST_APP)
    response = await running.post(body, headers=headers)
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    await _only_the_next_good_request_lands(running)


async def test_body_over_limit_is_413(ingest: Any) -> None:
    running = await ingest(max_body_bytes=4096)
    body = native_batch(
        [network_error(TEST_HOST, detail="d" * 200) for _ in range(40)], app=TEST_APP
    )
    raw = orjson.dumps(body)
    assert len(raw) > 4096
    response = await running.post(raw)
    assert response.status_code == 413
    assert "4096" in response.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is found by reading
        for i in range(0, len(raw), 1000):
            yield raw[i : i + 1000]

    response = await running.client.post("/v1/reports", content=chunks(), headers={**KEY, **JSON})
    assert response.status_code == 413
    await _only_the_next_good_request_lands(running)


async def test_gzip_bomb_is_413(ingest: Any) -> None:
    running = await ingest(max_decompressed_bytes=1 << 20)
    bomb = gzip.compress(b'{"app": "' + b" " * (64 << 20), compresslevel=9)  # 64 MiB inflated
    assert len(bomb) < running.settings.max_body_bytes
    started = time.monotonic()
    response = await running.post(bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed" in response.json()["detail"]
    assert time.monotonic() - started < 5  # stopped at the limit, not after inflating 64 MiB
    await _only_the_next_good_request_lands(running)


async def test_broken_gzip_is_400(ingest: Any) -> None:
    running = await ingest()
    raw = gzip.compress(orjson.dumps(native_batch([network_error(TEST_HOST)], app=TEST_APP)))
    for bad in (b"not gzip at all", raw[: len(raw) // 2]):
        response = await running.post(bad, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 400
        assert "gzip" in response.json()["detail"]


async def test_rate_limit_is_429_with_retry_after(ingest: Any) -> None:
    running = await ingest(ingest_rate_limit_per_second=0.5, ingest_rate_limit_burst=2)
    body = native_batch([network_error(TEST_HOST)], app=TEST_APP)
    statuses = [(await running.post(body)) for _ in range(3)]
    assert [r.status_code for r in statuses] == [202, 202, 429]
    assert int(statuses[2].headers["Retry-After"]) >= 1
    assert statuses[2].json()["error"] == "rate_limited"
    # the limit is per app: another app's key is unaffected
    other = {"X-Pinwatch-Key": OTHER_KEY}
    other_body = native_batch([network_error(TEST_HOST)], app=OTHER_APP)
    assert (await running.post(other_body, headers=other)).status_code == 202


async def test_health_ready_metrics_and_openapi(ingest: Any) -> None:
    running = await ingest(max_body_bytes=4096)
    assert (await running.client.get("/healthz")).status_code == 200
    ready = await running.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = native_batch([network_error(TEST_HOST), network_error(TEST_HOST)], app=TEST_APP)
    assert (await running.post(body)).status_code == 202
    assert (await running.post(b"nope")).status_code == 400
    assert (await running.post(body, headers={"X-Pinwatch-Key": ""})).status_code == 401
    text = (await running.client.get("/metrics")).text
    assert 'pinwatch_ingest_requests_total{format="native",status="202"} 1.0' in text
    assert 'pinwatch_ingest_requests_total{format="native",status="400"} 1.0' in text
    assert 'pinwatch_ingest_reports_total{format="native"} 2.0' in text
    assert 'pinwatch_ingest_rejected_total{format="native",reason="bad_json"} 1.0' in text
    assert 'pinwatch_ingest_rejected_total{format="native",reason="unauthorized"} 1.0' in text
    assert "pinwatch_ingest_produce_seconds_count 1.0" in text

    spec = (await running.client.get("/openapi.json")).json()
    for path, item in spec["paths"].items():
        if not path.startswith("/v1/reports"):
            continue
        answers = item["post"]["responses"]
        assert set(answers) >= {"202", "400", "401", "413", "415", "429", "503"}, path
        for status in ("400", "401", "413", "415", "429", "503"):
            schema = answers[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}
        assert "Retry-After" in answers["503"]["headers"]
    native = spec["paths"]["/v1/reports"]["post"]["requestBody"]["content"]["application/json"]
    batch = spec["components"]["schemas"][native["schema"]["$ref"].rsplit("/", 1)[1]]
    assert batch["properties"]["reports"]["maxItems"] == running.settings.max_reports_per_batch


async def test_large_batch_is_split_into_messages_under_the_limit(
    ingest: Any, ca: CertificateAuthority
) -> None:
    running = await ingest(kafka_max_message_bytes=65_536, kafka_partitions=1)
    chain = ca.chain("rotated")
    reports = [pin_validation(TEST_HOST, chain, result="pin_mismatch") for _ in range(200)]
    response = await running.post(native_batch(reports, app=TEST_APP))
    assert response.status_code == 202, response.text
    messages = await read_messages(running.settings, min_records=200)
    assert len(messages) > 1
    assert all(len(value) <= 65_536 for _, value in messages)
    ids = [r.id for _, value in messages for r in decode_batch(value)]
    assert sorted(ids) == sorted(r["id"] for r in reports)


async def test_concurrent_requests_are_all_on_the_topic(ingest: Any) -> None:
    """Records of concurrent requests share messages; each request is answered only when its
    own records are acknowledged, and none is lost or doubled."""
    import asyncio

    running = await ingest()
    bodies = [native_batch([network_error(TEST_HOST)], app=TEST_APP) for _ in range(200)]
    answers = await asyncio.gather(*(running.post(b) for b in bodies))
    assert all(a.status_code == 202 for a in answers)
    messages = await read_messages(running.settings, min_records=200)
    ids = [r.id for _, value in messages for r in decode_batch(value)]
    assert sorted(ids) == sorted(b["reports"][0]["id"] for b in bodies)
    assert len(messages) < 200  # coalesced


@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd", "snappy"])
async def test_compressed_messages_read_back_exactly(ingest: Any, codec: str) -> None:
    running = await ingest(kafka_compression=codec)
    reports = [network_error(TEST_HOST, "tls", count=i + 1) for i in range(20)]
    response = await running.post(native_batch(reports, app=TEST_APP))
    assert response.status_code == 202, response.text
    got = await read_records(running.settings, min_records=20)
    assert [(r.id, r.count) for r in got] == [(r["id"], r["count"]) for r in reports]
