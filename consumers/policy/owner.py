"""`PolicyOwner`: applies levers to the live state and records each change, and answers what the
edge serves. Changes are serialized in this process (a lock); between replicas the audit table
decides (consumers/policy/audit.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from consumers.policy import audit
from consumers.policy.audit import AuditRecord
from consumers.store import Store
from pinwatch.livepolicy import (
    Applied,
    Change,
    LiveState,
    adopt_policy_file,
    apply_change,
    document_claims,
    effective,
)
from pinwatch.logs import event
from pinwatch.policy import Policy

log = logging.getLogger("pinwatch.policy")

# Another replica's change shows here at most this late (each edge asks every second).
_CACHE_SECONDS = 0.5


@dataclass(frozen=True)
class Snapshot:
    state: LiveState
    documents: dict[str, dict[str, Any]]  # app -> claims, before the edge signs them

    @property
    def etag(self) -> str:
        return f'"v{self.state.version}"'

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.to_dict(), "documents": self.documents}


class PolicyOwner:
    def __init__(self, store: Store, policy: Policy) -> None:
        self.store = store
        self.policy = policy
        self._lock = asyncio.Lock()
        self._adopted = False
        self._cached: tuple[float, LiveState] | None = None

    async def start(self) -> None:
        """Record the policy file this process runs with, when the live state was computed
        against another (or nothing yet): version + 1, audited as `policy_file`."""
        async with self._lock:
            await self._adopt()

    async def _adopt(self) -> None:
        if self._adopted:
            return
        state = await audit.latest_state(self.store)
        applied = adopt_policy_file(
            self.policy, state, f"pinwatch consume on {socket.gethostname()}"
        )
        if applied is not None:
            await self._record(applied, origin="")
        self._adopted = True

    async def state(self) -> LiveState:
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < _CACHE_SECONDS:
            return cached[1]
        async with self._lock:
            await self._adopt()
            state = await audit.latest_state(self.store)
        self._cached = (time.monotonic(), state)
        return state

    async def snapshot(self) -> Snapshot:
        state = await self.state()
        documents = {app: document_claims(self.policy, state, app) for app in self.policy.app_ids}
        return Snapshot(state, documents)

    async def change(self, change: Change, origin: str = "") -> AuditRecord:
        """Apply one lever: `ChangeError` when refused, `audit.ConcurrentChange` when another
        owner recorded this version first, `StoreError` when ClickHouse failed (then nothing
        changed)."""
        async with self._lock:
            await self._adopt()
            state = await audit.latest_state(self.store)
            applied = apply_change(self.policy, state, change)
            return await self._record(applied, origin)

    async def _record(self, applied: Applied, origin: str) -> AuditRecord:
        self._cached = None
        record = await audit.record(self.store, applied, origin)
        self._cached = (time.monotonic(), applied.state)
        event(
            log,
            "policy_changed",
            version=record.version,
            action=record.action,
            actor=record.actor,
            app=record.app,
            host=record.host,
            reason=record.reason,
            what=record.what,
        )
        return record

    async def history(
        self, *, limit: int, app: str | None = None, host: str | None = None
    ) -> list[AuditRecord]:
        return await audit.history(self.store, limit=limit, app=app, host=host)

    def status(self, state: LiveState) -> dict[str, Any]:
        """Per host: the phase and percentage served, and who is killed there."""
        hosts = []
        for entry in self.policy.hosts:
            setting = effective(self.policy, state, entry.host)
            hosts.append(
                {
                    "host": entry.host,
                    "phase": setting.phase.value,
                    "enforce_percent": setting.percent,
                    "set_by_lever": entry.host in state.hosts,
                    "killed_for": sorted(k.app for k in state.kills if k.host in (entry.host, "")),
                }
            )
        return {
            "version": state.version,
            "changed_at": state.changed_at,
            "apps": self.policy.app_ids,
            "hosts": hosts,
            "kills": [asdict(k) for k in state.kills],
        }
