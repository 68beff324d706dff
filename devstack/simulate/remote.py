"""The simulated devices' remote policy client: every device fetches its app's signed policy
document from the edge every `refresh_seconds` (as the document says) at its own offset, checks
it with the reference verifier (pinwatch.policyverify: key, signature, app, expiry, version),
and from then on enforces, or not, as it says (phase, its own cohort, kill switches). A device
that holds no valid document yet behaves as its app was built (the policy file's phase).

Devices of one app due in the same tick share one conditional GET (the edge's ETag makes an
unchanged document a 304), but each verifies the document itself and keeps its own highest
version, as separate phones would.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from devstack.simulate.population import Device, Population
from pinwatch.jose import keys_of_jwk_set
from pinwatch.policyverify import PolicyRejected, PolicyVerifier

DEFAULT_REFRESH_SECONDS = 5.0  # until a document says otherwise


@dataclass
class _App:
    etag: str = ""
    token: str = ""
    jwks: dict[str, Any] | None = None


@dataclass
class PolicyStats:
    fetches: Counter[int] = field(default_factory=Counter)  # HTTP status -> count
    rejected: Counter[str] = field(default_factory=Counter)  # PolicyRejected.reason -> count
    errors: int = 0  # fetches that got no answer


class RemotePolicy:
    def __init__(
        self,
        base_url: str,
        population: Population,
        *,
        seed: int = 1,
        timeout: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.population = population
        self.stats = PolicyStats()
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._apps: dict[str, _App] = {}
        self._verifiers: dict[str, tuple[PolicyVerifier, dict[str, Any]]] = {}  # with its keys
        rng = random.Random(seed)
        # Devices first ask at a random moment of the first interval, as phones start apps.
        now = time.monotonic()
        self._due = {
            d.id: now + rng.uniform(0, DEFAULT_REFRESH_SECONDS) for d in population.devices
        }

    async def aclose(self) -> None:
        await self._client.aclose()

    def versions(self) -> Counter[int]:
        """How many devices obey which document version (0: none yet)."""
        return Counter(int(d.policy["version"]) if d.policy else 0 for d in self.population.devices)

    def obeying(self, version: int) -> float:
        """Share of devices holding this document version or a newer one."""
        devices = self.population.devices
        held = sum(1 for d in devices if d.policy and int(d.policy["version"]) >= version)
        return held / len(devices) if devices else 0.0

    async def refresh(self) -> None:
        """Fetch and apply the document for every device whose refresh is due."""
        now = time.monotonic()
        due: dict[str, list[Device]] = {}
        for device in self.population.devices:
            if self._due[device.id] <= now:
                due.setdefault(device.app.id, []).append(device)
        for app, devices in due.items():
            token = await self._fetch(app)
            for device in devices:
                if token:
                    self._apply(device, token)
                refresh = float((device.policy or {}).get("refresh_seconds", 0))
                self._due[device.id] = now + (refresh or DEFAULT_REFRESH_SECONDS)

    async def _fetch(self, app: str) -> str:
        state = self._apps.setdefault(app, _App())
        headers = {"If-None-Match": state.etag} if state.etag else {}
        try:
            if state.jwks is None:
                keys = await self._client.get("/v1/policy/keys")
                if keys.status_code != 200:
                    self.stats.fetches[keys.status_code] += 1
                    return ""
                state.jwks = keys.json()
            response = await self._client.get(f"/v1/policy/{app}", headers=headers)
        except httpx.HTTPError:
            self.stats.errors += 1
            return state.token
        self.stats.fetches[response.status_code] += 1
        if response.status_code == 200:
            state.token, state.etag = response.text, response.headers.get("etag", "")
        return state.token if response.status_code in (200, 304) else ""

    def _apply(self, device: Device, token: str) -> None:
        state = self._apps[device.app.id]
        assert state.jwks is not None
        verifier, jwks = self._verifiers.get(device.id, (None, None))
        if verifier is None:
            verifier = PolicyVerifier(state.jwks, device.app.id)
        elif jwks is not state.jwks:  # the published set was fetched again (a rotation)
            verifier.keys = keys_of_jwk_set(state.jwks)
        self._verifiers[device.id] = (verifier, state.jwks)
        try:
            device.policy = verifier.verify(token)
        except PolicyRejected as exc:
            self.stats.rejected[exc.reason] += 1
            if exc.reason == "unknown_kid":
                state.jwks = None  # the key rotated: fetch the published set again next time

    def describe(self) -> str:
        versions = " ".join(f"v{v}:{n}" for v, n in sorted(self.versions().items()))
        rejected = sum(self.stats.rejected.values())
        return f"policy {versions}" + (f" rejected={rejected}" if rejected else "")
