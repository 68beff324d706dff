"""No raw identifier anywhere (issue #17): every client format sent through the real pipeline,
then the topic's messages and every table of the ClickHouse database searched for the device
ids and full client addresses as sent. Only their keyed hashes and network prefixes are there:
ingest replaces them before a record leaves it, the raw payload kept as evidence included."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import orjson

from devstack.certs import CertificateAuthority
from devstack.clients import (
    hpkp_report,
    native_batch,
    nel_report,
    pin_validation,
    trustkit_android,
    trustkit_ios,
    trustkit_json,
)
from pinwatch.privacy import DeviceHasher
from pinwatch.settings import Settings
from tests.support.ingest import read_messages
from tests.support.names import TEST_APP, TEST_HOST, TEST_KEY
from tests.support.pipeline import Pipeline, run_pipeline

PROXY = "127.0.0.1"  # the test client connects from here, and ingest believes it as a proxy


async def _send(p: Pipeline, path: str, body: bytes, media: str, client_ip: str) -> None:
    headers = {
        "X-Pinwatch-Key": TEST_KEY,
        "Content-Type": media,
        "X-Forwarded-For": f"{client_ip}, {PROXY}",
    }
    async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as client:
        response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 202, response.text


async def _every_table(p: Pipeline) -> dict[str, bytes]:
    """Every row of every table and view of the test database, as ClickHouse writes them out
    (TSV; aggregate states as their bytes)."""
    names = await p.store.query(
        "SELECT name FROM system.tables WHERE database = {name:String} ORDER BY name",
        {"name": p.settings.clickhouse_database},
    )
    assert {"reports", "evidence"} <= {name for (name,) in names}
    client = p.store._get_client()  # the store's own engine (chDB: one per process)
    out = {}
    for (name,) in names:
        sql = f"SELECT * FROM `{p.settings.clickhouse_database}`.`{name}` FORMAT TSV"
        out[name] = await p.store.run(lambda sql=sql: bytes(client.raw_query(sql)))
    return out


async def test_no_raw_device_id_or_address_reaches_kafka_or_clickhouse(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    settings = make_settings(ingest_forwarded_allow_ips=PROXY, evidence_per_pin_hour=100)
    hasher = DeviceHasher(settings.device_hash_key)
    ids = {fmt: f"raw-{fmt}-{uuid.uuid4()}" for fmt in ("native", "ios", "android")}
    # one documentation-range address per format, none of them on this machine
    addresses = {
        fmt: f"198.51.100.{i + 11}"
        for i, fmt in enumerate(("native", "ios", "android", "hpkp", "nel"))
    }
    known = [ca.pin("primary")]
    chain = ca.chain("rotated")
    sends: list[tuple[str, bytes, str, str]] = [
        (
            "/v1/reports",
            orjson.dumps(
                native_batch(
                    [pin_validation(TEST_HOST, chain, result="pin_mismatch")],
                    app=TEST_APP,
                    device=ids["native"],
                )
            ),
            "application/json",
            addresses["native"],
        ),
        (
            "/v1/reports/trustkit",
            trustkit_json(trustkit_ios(TEST_HOST, chain, known_pins=known, vendor_id=ids["ios"])),
            "application/json",
            addresses["ios"],
        ),
        (
            "/v1/reports/trustkit",
            trustkit_json(
                trustkit_android(TEST_HOST, chain, known_pins=known, vendor_id=ids["android"])
            ),
            "application/json",
            addresses["android"],
        ),
        (
            "/v1/reports/hpkp",
            orjson.dumps(hpkp_report(TEST_HOST, chain, known_pins=known)),
            "application/json",
            addresses["hpkp"],
        ),
        (
            "/v1/reports/nel",
            orjson.dumps(
                [nel_report(f"https://{TEST_HOST}/", "tls.cert.pinned_key_not_in_cert_chain")]
            ),
            "application/reports+json",
            addresses["nel"],
        ),
    ]
    async with run_pipeline(settings) as p:
        for path, body, media, address in sends:
            await _send(p, path, body, media, address)
        await p.wait_inserted(len(sends), timeout=60)
        kafka = b"\n".join(value for _, value in await read_messages(settings, min_records=5))
        tables = await _every_table(p)

    places: dict[str, bytes] = {"kafka": kafka, **{f"clickhouse {t}": v for t, v in tables.items()}}
    for fmt, raw_id in ids.items():
        found = [where for where, text in places.items() if raw_id.encode() in text]
        assert found == [], f"the raw {fmt} device id is stored in {found}"
        hashed = hasher(raw_id).encode()
        assert hashed in kafka and hashed in tables["reports"], fmt
    for fmt, address in addresses.items():
        found = [where for where, text in places.items() if address.encode() in text]
        assert found == [], f"the full {fmt} client address is stored in {found}"
        network = address.rsplit(".", 1)[0] + ".0/24"
        assert network.encode() in kafka and network.encode() in tables["reports"]
    # TrustKit's payload is kept as evidence, with the device id replaced by its hash
    evidence = tables["evidence"]
    for fmt in ("ios", "android"):
        assert hasher(ids[fmt]).encode() in evidence, fmt
