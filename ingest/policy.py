"""The signed policy document on the edge: `GET /v1/policy/{app}` (a compact JWS, EdDSA) and
`GET /v1/policy/keys` (the JWK Set that verifies it), both with ETag, If-None-Match and
Cache-Control so a fleet can poll them cheaply.

What each app is told comes from the owner of the live state (the consumer's admin API,
consumers/policy/): `PolicyFeed` asks it every `policy_state_poll_seconds` (a 304 when nothing
changed), so a lever reaches this edge within about a second, without a restart. The last state
heard is kept in a file (written whole, then renamed), so an edge restarted while the owner is
away serves what it served before rather than nothing; and a state older than the one held is
refused, so a document's version never goes backwards. The edge signs: the owner never sees the
signing key. Issue times are rounded to a quarter of the document lifetime, and Ed25519
signatures are deterministic, so every edge replica serves the same bytes (one ETag) for one
version.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Request, Response

from ingest.metrics import IngestMetrics
from pinwatch.errors import error_response, error_responses
from pinwatch.jose import JoseError, SigningKeys, sign_compact
from pinwatch.logs import event
from pinwatch.policykeys import load_signing_keys
from pinwatch.settings import Settings

log = logging.getLogger("pinwatch.ingest.policy")

STATE_PATH = "/v1/admin/policy/state"
JWS_MEDIA_TYPE = "application/jose"  # RFC 7515 section 9.2.1: the compact serialization
JWKS_MEDIA_TYPE = "application/jwk-set+json"


class PolicyUnavailable(RuntimeError):
    """The edge cannot serve documents yet (no signing key, or no state heard)."""


@dataclass(frozen=True)
class Signed:
    body: bytes
    etag: str
    version: int


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _epoch(iso: str) -> int:
    try:
        return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


class PolicyFeed:
    def __init__(self, settings: Settings, metrics: IngestMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.url = settings.policy_owner + STATE_PATH
        self.snapshot: dict[str, Any] | None = None
        self._etag = ""
        self._signed: dict[str, tuple[int, int, Signed]] = {}  # app -> (version, iat, signed)
        self._keys: SigningKeys | None = None
        self._keys_error = ""
        self._owner_down_since: float | None = None
        self._load_cache()
        self.reload_keys()

    # --- the state ---------------------------------------------------------------------------
    @property
    def version(self) -> int | None:
        return None if self.snapshot is None else int(self.snapshot["state"]["version"])

    def _load_cache(self) -> None:
        path = self.settings.policy_state_cache_path
        try:
            self.snapshot = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            event(
                log,
                "policy_cache_unreadable",
                level=logging.WARNING,
                path=str(path),
                error=str(exc),
            )
            return
        self._published()
        event(log, "policy_cache_loaded", path=str(path), version=self.version)

    def _save_cache(self, body: bytes) -> None:
        path = self.settings.policy_state_cache_path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(body)
            os.replace(tmp, path)  # whole or not at all: a reader never sees half a state
        except OSError as exc:
            event(log, "policy_cache_write_failed", level=logging.WARNING, error=str(exc))

    def accept(self, body: bytes, etag: str = "") -> bool:
        """Take a state from the owner; False (kept the current one) when it is older."""
        snapshot = orjson.loads(body)
        version = int(snapshot["state"]["version"])
        current = self.version
        if current is not None and version < current:
            event(
                log,
                "policy_state_older",
                level=logging.ERROR,
                served=current,
                owner=version,
                detail="the owner's live state is older than the one served; keeping it (was "
                "the policy_audit table lost? remove the edge's state cache to follow the owner)",
            )
            return False
        self.snapshot, self._etag = snapshot, etag
        self._save_cache(body)
        self._published()
        if version != current:
            event(log, "policy_state_updated", version=version, previous=current)
        return True

    def _published(self) -> None:
        if self.metrics is not None:
            self.metrics.policy_version.value = self.version
            self.metrics.policy_updated.value = time.time()

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.policy_polls.add((outcome,))

    async def poll(self, client: httpx.AsyncClient) -> None:
        token = self.settings.admin_token.get_secret_value()
        headers = {"Authorization": f"Bearer {token}"}
        if self._etag:
            headers["If-None-Match"] = self._etag
        try:
            response = await client.get(self.url, headers=headers)
        except httpx.HTTPError as exc:
            self._owner_down(f"{type(exc).__name__}: {exc}")
            return
        if response.status_code == 304:
            self._owner_up()
            self._count("unchanged")
            if self.metrics is not None:
                self.metrics.policy_updated.value = time.time()
            return
        if response.status_code != 200:
            self._owner_down(f"HTTP {response.status_code}: {response.text[:200]}")
            return
        self._owner_up()
        try:
            taken = self.accept(response.content, response.headers.get("etag", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self._owner_down(f"not a policy state: {exc}")
            return
        self._count("changed" if taken else "older")

    def _owner_down(self, why: str) -> None:
        self._count("failed")
        if self._owner_down_since is None:
            self._owner_down_since = time.monotonic()
            event(
                log,
                "policy_owner_unreachable",
                level=logging.WARNING,
                url=self.url,
                error=why,
                serving=self.version,
            )

    def _owner_up(self) -> None:
        if self._owner_down_since is not None:
            down = time.monotonic() - self._owner_down_since
            self._owner_down_since = None
            event(log, "policy_owner_reachable", url=self.url, after_seconds=round(down, 1))

    async def run(self) -> None:
        """Poll the owner until cancelled."""
        timeout = self.settings.policy_owner_timeout_seconds
        async with httpx.AsyncClient(timeout=timeout) as client:
            while True:
                await self.poll(client)
                if self._keys is None:
                    self.reload_keys()
                await asyncio.sleep(self.settings.policy_state_poll_seconds)

    # --- keys and documents ------------------------------------------------------------------
    def reload_keys(self) -> None:
        try:
            self._keys = load_signing_keys(self.settings)
            self._keys_error = ""
        except JoseError as exc:
            self._keys, self._keys_error = None, str(exc)

    def keys(self) -> SigningKeys:
        if self._keys is None:
            raise PolicyUnavailable(self._keys_error)
        return self._keys

    def apps(self) -> list[str]:
        return sorted(self.snapshot["documents"]) if self.snapshot else []

    def document(self, app: str, now: float | None = None) -> Signed | None:
        """The app's signed document (None: an app the policy does not name)."""
        keys = self.keys()
        if self.snapshot is None:
            raise PolicyUnavailable(
                f"this edge has not heard the live policy from its owner ({self.url}) yet"
            )
        claims = self.snapshot["documents"].get(app)
        if claims is None:
            return None
        ttl = self.settings.policy_document_ttl_seconds
        period = max(60, ttl // 4)
        now = time.time() if now is None else now
        changed = _epoch(self.snapshot["state"].get("changed_at", ""))
        iat = max(math.floor(now / period) * period, changed)
        version = int(claims["version"])
        cached = self._signed.get(app)
        if cached is not None and cached[:2] == (version, iat):
            return cached[2]
        payload = {
            **claims,
            "iss": "pinwatch",
            "iat": iat,
            "exp": iat + ttl,
            "refresh_seconds": self.settings.policy_refresh_seconds,
        }
        token = sign_compact(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS), keys.signing)
        body = token.encode("ascii")
        signed = Signed(body, _etag(body), version)
        self._signed[app] = (version, iat, signed)
        return signed


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


def policy_router(feed: PolicyFeed, settings: Settings) -> APIRouter:
    router = APIRouter(tags=["policy"])
    cache = f"public, max-age={settings.policy_cache_max_age_seconds}"
    retry = str(math.ceil(settings.policy_state_poll_seconds))

    def unavailable(exc: PolicyUnavailable) -> Response:
        return error_response(503, "unavailable", str(exc), headers={"Retry-After": retry})

    def answer(request: Request, body: bytes, etag: str, media: str, **extra: str) -> Response:
        headers = {"ETag": etag, "Cache-Control": cache, **extra}
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media, headers=headers)

    @router.get(
        "/v1/policy/keys",
        summary="The JWK Set that verifies policy documents (Ed25519, kid = RFC 7638 thumbprint)",
        responses={
            200: {"description": "JWK Set", "content": {JWKS_MEDIA_TYPE: {}}},
            304: {"description": "unchanged since the If-None-Match ETag"},
            **error_responses(503),
        },
    )
    async def keys(request: Request) -> Response:
        try:
            jwks = orjson.dumps(feed.keys().jwk_set())
        except PolicyUnavailable as exc:
            return unavailable(exc)
        return answer(request, jwks, _etag(jwks), JWKS_MEDIA_TYPE)

    @router.get(
        "/v1/policy/{app}",
        summary="The app's pin policy as a compact JWS (EdDSA): hosts, pins, phase, "
        "enforcement percentage, kill switches, version and expiry",
        responses={
            200: {"description": "compact JWS", "content": {JWS_MEDIA_TYPE: {}}},
            304: {"description": "unchanged since the If-None-Match ETag"},
            **error_responses(404, 503),
        },
    )
    async def document(request: Request, app: str) -> Response:
        try:
            signed = feed.document(app)
        except PolicyUnavailable as exc:
            return unavailable(exc)
        if signed is None:
            known = ", ".join(feed.apps())
            return error_response(
                404, "not_found", f"no policy for app {app[:200]!r}; apps: {known}", "app"
            )
        version = {"X-Pinwatch-Policy-Version": str(signed.version)}
        return answer(request, signed.body, signed.etag, JWS_MEDIA_TYPE, **version)

    return router
