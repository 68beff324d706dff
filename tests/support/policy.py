"""The live policy in tests: its owner (the consumer's admin API on a migrated chDB database)
served by uvicorn, a signing key, and the edge's document fetched and checked the way a client
checks it (pinwatch.policyverify)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from consumers.api import create_api
from consumers.store import Store
from pinwatch.jose import create_key_file
from pinwatch.policyverify import PolicyVerifier
from pinwatch.settings import Settings
from tests.support.pipeline import migrated_store
from tests.support.serve import serve


def admin_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}


def signing_key(directory: Path, name: str = "policy-signing-key.pem") -> Path:
    path = directory / name
    create_key_file(path)
    return path


@dataclass
class Owner:
    url: str
    store: Store
    settings: Settings
    client: httpx.AsyncClient

    async def change(self, **body: Any) -> httpx.Response:
        body.setdefault("actor", "tester@ci")
        return await self.client.post("/v1/admin/policy/changes", json=body)


@asynccontextmanager
async def serve_owner(settings: Settings) -> AsyncIterator[Owner]:
    """The consumer's API (no consumer running) on a migrated database: the live policy's
    owner. Its database is dropped on the way out."""
    async with (
        migrated_store(settings) as store,
        serve(create_api(settings, store)) as url,
        httpx.AsyncClient(base_url=url, headers=admin_headers(settings), timeout=30) as client,
    ):
        yield Owner(url, store, settings, client)


@dataclass
class Fetched:
    claims: dict[str, Any]
    etag: str
    response: httpx.Response


async def fetch_document(client: httpx.AsyncClient, app: str) -> Fetched:
    """The app's document from an edge, verified with the edge's published JWK Set."""
    keys = await client.get("/v1/policy/keys")
    assert keys.status_code == 200, keys.text
    response = await client.get(f"/v1/policy/{app}")
    assert response.status_code == 200, response.text
    claims = PolicyVerifier(keys.json(), app).verify(response.text)
    return Fetched(claims, response.headers["etag"], response)


async def wait_for_document(
    client: httpx.AsyncClient,
    app: str,
    condition: Callable[[dict[str, Any]], bool],
    within: float = 5.0,
) -> tuple[Fetched, float]:
    """Poll the edge until its verified document meets `condition`; returns it and the
    seconds it took. Fails (with the last claims) after `within` seconds."""
    started = time.monotonic()
    while True:
        seen: Fetched | str
        if (await client.get(f"/v1/policy/{app}")).status_code == 503:
            seen = "503: no live state heard yet"  # a starting edge, before its first poll
        else:
            seen = await fetch_document(client, app)
            if condition(seen.claims):
                return seen, time.monotonic() - started
        assert time.monotonic() - started < within, f"not served within {within}s: {seen}"
        await asyncio.sleep(0.05)


def host_entry(claims: dict[str, Any], host: str) -> dict[str, Any]:
    return next(h for h in claims["hosts"] if h["host"] == host)


def write_state_cache(settings: Settings, path: Path) -> Path:
    """The copy of a live state an edge keeps (ingest/policy.py), as its owner would have served
    it for the settings' policy on first start: an edge given it serves documents without an
    owner."""
    from pinwatch.livepolicy import LiveState, adopt_policy_file, document_claims
    from pinwatch.policy import load_policy

    policy = load_policy(settings.policy_file)
    applied = adopt_policy_file(policy, LiveState(), "tests")
    assert applied is not None
    documents = {app: document_claims(policy, applied.state, app) for app in policy.app_ids}
    path.write_bytes(orjson.dumps({"state": applied.state.to_dict(), "documents": documents}))
    return path


def edge_polls(metrics_text: str) -> float:
    """How many times the edge has asked its owner for the live state (any outcome), from its
    /metrics: a check that it asked again after some moment, without sleeping."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "pinwatch_ingest_policy_polls"
        for sample in family.samples
        if sample.name.endswith("_total")
    )
