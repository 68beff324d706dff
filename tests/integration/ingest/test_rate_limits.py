"""Ingest's limits per device and per client network, against a real ingest and Kafka: the one
that floods gets 429 with Retry-After, everyone else keeps getting 202, the refusals are
counted by reason, and exactly what was accepted is on the topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from devstack.certs import CertificateAuthority
from devstack.clients import native_batch, network_error, trustkit_ios, trustkit_json
from pinwatch.privacy import DeviceHasher
from pinwatch.settings import Settings
from tests.support.ingest import ingest_apps, read_records
from tests.support.names import TEST_APP, TEST_HOST, TEST_KEY
from tests.support.pipeline import metric_value

HEADERS = {"X-Pinwatch-Key": TEST_KEY, "Content-Type": "application/json"}


@pytest.fixture
async def ingest(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    async with ingest_apps(make_settings, default_headers=HEADERS) as start:
        yield start


def batch(device: str) -> dict[str, Any]:
    return native_batch([network_error(TEST_HOST, "timeout")], app=TEST_APP, device=device)


async def rejected(running: Any, reason: str) -> float:
    text = (await running.client.get("/metrics")).text
    return metric_value(text, "pinwatch_ingest_rejected_total", reason=reason)


async def test_a_flooding_device_gets_429_while_other_devices_and_networks_get_202(
    ingest: Any, ca: CertificateAuthority
) -> None:
    running = await ingest(
        ingest_device_rate_limit_per_second=0.5, ingest_device_rate_limit_burst=3
    )
    flood = [await running.post(batch("debug-phone"), source="127.31.1.1") for _ in range(10)]
    assert [r.status_code for r in flood] == [202] * 3 + [429] * 7
    refused = flood[-1]
    assert refused.json()["error"] == "rate_limited"
    assert "device exceeds 0.5 requests/s" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 2  # a token every 2 s

    # The same network, another device; another network: not held back by the flood.
    neighbour = await running.post(batch("colleague-phone"), source="127.31.1.2")
    elsewhere = await running.post(batch("someone-else"), source="127.31.2.1")
    assert (neighbour.status_code, elsewhere.status_code) == (202, 202)
    # The same device reached through another format is the same device (its keyed hash).
    report = trustkit_ios(
        TEST_HOST, ca.chain("rotated"), known_pins=[ca.pin("primary")], vendor_id="debug-phone"
    )
    trustkit = await running.post(
        trustkit_json(report),
        path="/v1/reports/trustkit",
        source="127.31.1.1",
    )
    assert trustkit.status_code == 429

    assert await rejected(running, "rate_limited_device") == 8
    assert await rejected(running, "rate_limited_network") == 0
    # Exactly the accepted requests' reports are on Kafka: 3 of the flood, 2 others.
    records = await read_records(running.settings, min_records=5)
    hashed = DeviceHasher(running.settings.device_hash_key)
    devices = [r.device for r in records]
    assert len(records) == 5 and devices.count(hashed("debug-phone")) == 3

    # Retry-After means it: the device gets through again once its bucket refilled.
    deadline = time.monotonic() + 10
    while True:
        again = await running.post(batch("debug-phone"), source="127.31.1.1")
        if again.status_code != 429 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    assert again.status_code == 202, again.text


async def test_a_flooding_network_is_refused_before_its_body_is_read(ingest: Any) -> None:
    running = await ingest(
        ingest_network_rate_limit_per_second=0.2, ingest_network_rate_limit_burst=4
    )
    # A fresh device id each time, as a spoofing client would send: the network still counts.
    answers = [await running.post(batch(f"spoofed-{n}"), source="127.32.7.1") for n in range(6)]
    assert [r.status_code for r in answers] == [202] * 4 + [429] * 2
    assert "network 127.32.7.0/24 exceeds 0.2 requests/s" in answers[-1].json()["detail"]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 5
    # Refused before the body is read or parsed: a broken body is 429 too, not 400.
    broken = await running.post(b"{not json", source="127.32.7.9")
    assert broken.status_code == 429
    # Other networks are unaffected.
    assert (await running.post(batch("fine"), source="127.32.8.1")).status_code == 202
    assert await rejected(running, "rate_limited_network") == 3
    assert await rejected(running, "bad_json") == 0
