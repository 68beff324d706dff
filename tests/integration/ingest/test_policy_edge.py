"""The signed policy document on a served ingest edge, against its real owner (the consumer's
admin API on chDB): the document verifies with the published JWK Set, answers carry ETag and
Cache-Control and revalidate as 304, every lever is served within 5 s without a restart, a
refused change leaves the document as it was, and an edge that lost its owner, or restarted
without it, keeps serving the last document it had."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from pinwatch.settings import Settings
from tests.support.errors import assert_error
from tests.support.names import OTHER_APP, REPORT_ONLY_HOST, TEST_APP, TEST_HOST
from tests.support.policy import (
    Owner,
    edge_polls,
    fetch_document,
    host_entry,
    serve_owner,
    signing_key,
    wait_for_document,
)
from tests.support.serve import Served, start_ingest

WITHIN = 5.0  # seconds: the bound from a lever to the edge serving it


@pytest.fixture
async def owner(make_settings: Callable[..., Settings]) -> AsyncIterator[Owner]:
    async with serve_owner(make_settings()) as running:
        yield running


def edge_settings(owner: Owner, tmp_path: Path, **overrides: object) -> Settings:
    return owner.settings.model_copy(
        update={
            "policy_owner_url": owner.url,
            "policy_signing_key_file": signing_key(tmp_path),
            "policy_state_cache_file": tmp_path / "edge-state.json",
            "policy_cache_max_age_seconds": 7,
            **overrides,
        }
    )


@pytest.fixture
async def edge(owner: Owner, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    served = await start_ingest(edge_settings(owner, tmp_path))
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            await wait_for_document(client, TEST_APP, lambda c: c["version"] >= 1)
            yield client
    finally:
        await served.stop(30)


async def test_the_document_verifies_with_the_published_keys_and_caches(
    owner: Owner, edge: httpx.AsyncClient
) -> None:
    keys = await edge.get("/v1/policy/keys")
    assert keys.headers["content-type"] == "application/jwk-set+json"
    assert keys.headers["cache-control"] == "public, max-age=7"
    [jwk] = keys.json()["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
    fetched = await fetch_document(edge, TEST_APP)
    response = fetched.response
    assert response.headers["content-type"] == "application/jose"
    assert response.headers["cache-control"] == "public, max-age=7"
    assert response.headers["x-pinwatch-policy-version"] == "1"
    claims = fetched.claims
    assert (claims["app"], claims["version"], claims["iss"]) == (TEST_APP, 1, "pinwatch")
    assert claims["exp"] - claims["iat"] == owner.settings.policy_document_ttl_seconds
    assert claims["refresh_seconds"] == owner.settings.policy_refresh_seconds
    api = host_entry(claims, TEST_HOST)
    assert (api["phase"], api["enforce_percent"], api["kill_switch"]) == ("enforce", 100, False)
    assert {p["role"] for p in api["pins"]} == {"primary", "backup"}
    # Revalidation: the same ETag is a 304 without a body, for the document and the keys.
    again = await edge.get(f"/v1/policy/{TEST_APP}", headers={"If-None-Match": fetched.etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == fetched.etag
    weak = await edge.get(f"/v1/policy/{TEST_APP}", headers={"If-None-Match": f"W/{fetched.etag}"})
    assert weak.status_code == 304
    keys_again = await edge.get("/v1/policy/keys", headers={"If-None-Match": keys.headers["etag"]})
    assert keys_again.status_code == 304
    # Deterministic: the same version signed again is the same bytes (one ETag per version).
    assert (await fetch_document(edge, TEST_APP)).response.content == response.content
    other = await fetch_document(edge, OTHER_APP)
    assert other.claims["app"] == OTHER_APP and other.etag != fetched.etag
    assert_error(await edge.get("/v1/policy/com.nope"), 404, "not_found", "app")


async def test_every_lever_is_served_within_five_seconds(
    owner: Owner, edge: httpx.AsyncClient
) -> None:
    levers = [
        (
            {"action": "set_phase", "host": REPORT_ONLY_HOST, "phase": "enforce", "percent": 10},
            lambda c: host_entry(c, REPORT_ONLY_HOST)["enforce_percent"] == 10,
        ),
        (
            {"action": "kill", "app": TEST_APP, "host": TEST_HOST, "reason": "rotation"},
            lambda c: host_entry(c, TEST_HOST)["kill_switch"],
        ),
        ({"action": "kill", "app": TEST_APP, "reason": "all of it"}, lambda c: c["kill_switch"]),
        ({"action": "unkill", "app": TEST_APP}, lambda c: not c["kill_switch"]),
        (
            {"action": "unkill", "app": TEST_APP, "host": TEST_HOST},
            lambda c: not host_entry(c, TEST_HOST)["kill_switch"],
        ),
        (
            {"action": "set_phase", "host": REPORT_ONLY_HOST, "phase": "report_only"},
            lambda c: host_entry(c, REPORT_ONLY_HOST)["phase"] == "report_only",
        ),
    ]
    seen = 1
    for body, served in levers:
        answer = await owner.change(**body)
        assert answer.status_code == 200, answer.text
        version = answer.json()["version"]
        fetched, took = await wait_for_document(
            edge, TEST_APP, lambda c, v=version, ok=served: c["version"] == v and ok(c), WITHIN
        )
        assert took < WITHIN and fetched.claims["version"] > seen
        seen = fetched.claims["version"]


async def test_a_refused_change_leaves_the_document_as_it_was(
    owner: Owner, edge: httpx.AsyncClient
) -> None:
    before = await fetch_document(edge, TEST_APP)
    for body, status in (
        ({"action": "set_phase", "host": "nope.test", "phase": "enforce"}, 404),
        ({"action": "set_phase", "host": TEST_HOST, "phase": "enforce", "percent": 250}, 400),
        ({"action": "kill", "app": "com.nope", "reason": "r"}, 404),
        ({"action": "kill", "app": TEST_APP}, 400),
    ):
        assert (await owner.change(**body)).status_code == status
    await _polled(edge)
    after = await fetch_document(edge, TEST_APP)
    assert after.response.content == before.response.content


async def _polled(edge: httpx.AsyncClient, rounds: int = 2) -> None:
    """Until the edge has asked its owner `rounds` more times (the first may have been under
    way already): its next answer reflects what the owner says now, or that it is gone."""
    before = edge_polls((await edge.get("/metrics")).text)
    deadline = time.monotonic() + WITHIN
    while edge_polls((await edge.get("/metrics")).text) < before + rounds:
        assert time.monotonic() < deadline, "the edge did not ask its owner again"
        await asyncio.sleep(0.05)


async def test_without_its_owner_the_edge_keeps_serving_and_a_restart_serves_its_copy(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with serve_owner(make_settings()) as owner:
        settings = edge_settings(owner, tmp_path)
        first = await start_ingest(settings)
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
            await owner.change(action="kill", app=TEST_APP, reason="before the owner went")
            served, _ = await wait_for_document(client, TEST_APP, lambda c: c["kill_switch"])
    # The owner is gone (its database too): the running edge serves what it had...
    async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
        await _polled(client)
        assert (await fetch_document(client, TEST_APP)).response.content == served.response.content
    await first.stop(30)
    # ...and so does an edge restarted while its owner is away, from the copy it kept.
    again = await start_ingest(settings)
    try:
        async with httpx.AsyncClient(base_url=again.url, timeout=10) as client:
            fetched = await fetch_document(client, TEST_APP)
            assert fetched.claims["kill_switch"] and fetched.claims["version"] == 2
    finally:
        await again.stop(30)


async def test_an_edge_that_never_heard_its_owner_or_has_no_key_says_so(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        policy_owner_url="http://127.0.0.1:9",
        policy_signing_key_file=signing_key(tmp_path),
        policy_state_cache_file=tmp_path / "none.json",
    )
    served: Served = await start_ingest(settings)
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            response = await client.get(f"/v1/policy/{TEST_APP}")
            detail = assert_error(response, 503, "unavailable", None)
            assert "has not heard the live policy from its owner" in detail
            assert response.headers["retry-after"] == "1"
            assert (await client.get("/v1/policy/keys")).status_code == 200
            # Reports flow whatever the policy feed does.
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await served.stop(30)
    keyless = make_settings(policy_signing_key_file=tmp_path / "missing.pem")
    served = await start_ingest(keyless)
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            for path in ("/v1/policy/keys", f"/v1/policy/{TEST_APP}"):
                detail = assert_error(await client.get(path), 503, "unavailable", None)
                assert "PINWATCH_POLICY_SIGNING_KEY_FILE" in detail and "missing.pem" in detail
    finally:
        await served.stop(30)


async def test_an_older_state_from_the_owner_is_not_served(
    owner: Owner, edge: httpx.AsyncClient
) -> None:
    """An owner whose audit log was lost starts over at a lower version: clients would refuse
    it as older, so the edge keeps the newer document (and logs why)."""
    await owner.change(action="kill", app=TEST_APP, reason="r")
    newer, _ = await wait_for_document(edge, TEST_APP, lambda c: c["version"] == 2)
    await owner.store.command("TRUNCATE TABLE {db}.policy_audit")
    deadline = asyncio.get_running_loop().time() + WITHIN
    while (await owner.client.get("/v1/admin/policy/state")).json()["state"]["version"] >= 2:
        assert asyncio.get_running_loop().time() < deadline, "the owner still serves version 2"
        await asyncio.sleep(0.1)  # its state is cached for half a second
    await _polled(edge)
    assert (await fetch_document(edge, TEST_APP)).response.content == newer.response.content
