"""After the page: pull the kill switch it names, watch the failing reports stop, fix the
server, lift the switch, and time each stage (`pinwatch demo --kill-switch`).

Every stage is observed from outside, as an operator would: the edge's signed document (checked
with the reference verifier), the simulated devices' own view of their document, the
simulator's tally of what ingest accepted, and the consumer's /metrics (it counts only what it
stored). "Failing reports" are pin failures of devices that enforced: what users meet. After
the kill those devices report the same failures as report-only (`enforced: false`), so the
broken server stays visible while nobody is locked out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from devstack.simulate.runner import Simulation
from devstack.simulate.timeline import consumer_validations
from pinwatch.livepolicy import Change
from pinwatch.policyclient import PolicyAdmin
from pinwatch.policyverify import PolicyRejected, PolicyVerifier

STAGES = (
    ("killed", "kill switch pulled"),
    ("served", "the edge serves the killed document"),
    ("obeyed", "every simulated device obeys it"),
    ("last_sent", "last failing report (a device that enforced) accepted by ingest"),
    ("baseline", "failing reports back to baseline: the last one the consumer counted"),
    ("fixed", "server fixed: the pinned key again"),
    ("lifted", "kill switch lifted"),
    ("enforcing", "devices enforce again"),
)


@dataclass
class KillTimeline:
    killed_at: float  # time.time() the kill command was issued
    command: str
    versions: dict[str, int] = field(default_factory=dict)  # killed, lifted -> document version
    stages: dict[str, float] = field(default_factory=dict)
    failures_after_lift: float = 0.0  # failing reports of enforcing devices once lifted

    def seconds(self, stage: str) -> float | None:
        at = self.stages.get(stage)
        return None if at is None else at - self.killed_at

    def mark(self, stage: str, at: float | None = None) -> bool:
        if stage in self.stages:
            return False
        self.stages[stage] = time.time() if at is None else at
        return True

    @property
    def recovered(self) -> bool:
        return "baseline" in self.stages

    def render(self) -> str:
        lines = [f"Kill switch (seconds since `{self.command}`):"]
        for stage, label in STAGES:
            seconds = self.seconds(stage)
            text = f"{seconds:+7.1f}s" if seconds is not None else "    -   "
            version = self.versions.get(stage)
            lines.append(f"  {text}  {label}" + (f" (version {version})" if version else ""))
        if "enforcing" in self.stages:
            lines.append(
                f"  failing reports since the switch was lifted: {self.failures_after_lift:g}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = {stage: self.seconds(stage) for stage, _ in STAGES}
        return data


class KillSwitchPlay:
    def __init__(
        self,
        sim: Simulation,
        admin: PolicyAdmin,
        *,
        app: str,
        host: str,
        command: str,
        ingest_url: str,
        consumer_url: str,
        say: Callable[[str], None] = print,
        poll_seconds: float = 0.25,
    ) -> None:
        assert sim.remote is not None, "the devices must obey the remote policy"
        self.sim = sim
        self.remote = sim.remote
        self.admin = admin
        self.app, self.host, self.command = app, host, command
        self.ingest_url, self.consumer_url = ingest_url, consumer_url
        self.say = say
        self.poll_seconds = poll_seconds
        self.timeline = KillTimeline(killed_at=0.0, command=command)

    def _mark(self, stage: str, at: float | None = None, version: int | None = None) -> None:
        t = self.timeline
        if t.mark(stage, at):
            if version:
                t.versions[stage] = version
            label = dict(STAGES)[stage] + (f" (version {version})" if version else "")
            self.say(f"  {t.stages[stage] - t.killed_at:+7.1f}s  {label}")

    async def play(self, *, quiet_seconds: float, within: float) -> KillTimeline:
        """Kill, wait for the failing reports to stop (none counted for `quiet_seconds` once
        every device obeys), fix the server, lift, wait for enforcement to come back."""
        t = self.timeline
        t.killed_at = time.time()
        killed = await self._change("kill", "the page: rotation to an unpinned key")
        self._mark("killed", t.killed_at, killed)
        async with httpx.AsyncClient(timeout=5.0) as client:
            await self._until_baseline(client, killed, quiet_seconds, within)
            if not t.recovered:
                return t
            self.sim.restore()
            self._mark("fixed")
            # Let every device report against the fixed server while still report-only.
            await asyncio.sleep(self.sim.population.config.report_interval)
            lifted = await self._change("unkill", "the pinned key is served again")
            self._mark("lifted", version=lifted)
            await self._until_enforcing(client, lifted, within)
        return t

    async def _change(self, action: str, reason: str) -> int:
        change = Change(action, "pinwatch demo", reason, app=self.app, host=self.host)
        record = await asyncio.to_thread(self.admin.change, change)
        return int(record["version"])

    async def _counts(self, client: httpx.AsyncClient) -> tuple[float, float] | None:
        """(failing, ok) validations of enforcing devices the consumer counted."""
        try:
            text = (await client.get(f"{self.consumer_url}/metrics")).text
        except httpx.HTTPError:
            return None
        scope = {"enforced": True, "app": self.app, "host": self.host}
        failing = consumer_validations(text, failed=True, **scope)  # type: ignore[arg-type]
        return failing, consumer_validations(text, failed=False, **scope)  # type: ignore[arg-type]

    async def _served(self, client: httpx.AsyncClient) -> int:
        try:
            keys = (await client.get(f"{self.ingest_url}/v1/policy/keys")).json()
            token = (await client.get(f"{self.ingest_url}/v1/policy/{self.app}")).text
            return int(PolicyVerifier(keys, self.app).verify(token)["version"])
        except (httpx.HTTPError, ValueError, PolicyRejected):
            return 0

    async def _until_baseline(
        self, client: httpx.AsyncClient, version: int, quiet: float, within: float
    ) -> None:
        t = self.timeline
        counts = await self._counts(client)
        failing = counts[0] if counts else 0.0
        last_counted = t.killed_at
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await self._served(client) >= version:
                self._mark("served", version=version)
            if self.remote.obeying(version) >= 1.0:
                self._mark("obeyed", version=version)
            counts = await self._counts(client)
            now = time.time()
            if counts is not None and counts[0] > failing:
                failing, last_counted = counts[0], now
            obeyed = t.stages.get("obeyed")
            if obeyed is not None and now - max(obeyed, last_counted) >= quiet:
                sent = self.sim.tally.last_enforced_failure_sent
                self._mark("last_sent", sent if sent is not None else t.killed_at)
                self._mark("baseline", last_counted)
                return
            await asyncio.sleep(self.poll_seconds)
        self.say(f"  failing reports did not stop within {within:.0f}s of the kill")

    async def _until_enforcing(
        self, client: httpx.AsyncClient, version: int, within: float
    ) -> None:
        t = self.timeline
        before = await self._counts(client) or (0.0, 0.0)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            counts = await self._counts(client)
            if counts is not None and self.remote.obeying(version) >= 1.0 and counts[1] > before[1]:
                t.failures_after_lift = counts[0] - before[0]
                self._mark("enforcing", version=version)
                return
            await asyncio.sleep(self.poll_seconds)
        self.say(f"  devices did not enforce again within {within:.0f}s of the lift")
