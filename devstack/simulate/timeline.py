"""The incident timeline: after a rotation, when each stage of the pipeline first showed it.

Every stage is observed from outside, the way an operator would check it: the simulator's own
tally (ingest accepted a failing report), the consumer's /metrics (it inserted and counted a
failure: only the consumer process may open chDB, and it counts only what it inserted),
Prometheus' query API, Prometheus' alerts API (pending, firing), and the page receiver.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devstack.monitoring import MonitoringError, prometheus_alerts, query
from devstack.simulate.sender import SendOutcomes

STAGES = (
    ("sent", "first failing report sent (accepted by ingest)"),
    ("stored", "first failure in ClickHouse (consumer inserted and counted it)"),
    ("scraped", "failure metric visible to Prometheus"),
    ("pending", "alert pending"),
    ("firing", "alert firing"),
    ("paged", "page delivered to the receiver"),
)
FAILURES_QUERY = 'sum(pinwatch_pin_validations_total{result!="ok"})'


@dataclass
class Timeline:
    rotated_at: float  # time.time() of the rotation
    stages: dict[str, float] = field(default_factory=dict)  # stage -> time.time()
    alertname: str = ""
    page: str = ""  # the delivered page, as printed

    def seconds(self, stage: str) -> float | None:
        at = self.stages.get(stage)
        return None if at is None else at - self.rotated_at

    @property
    def complete(self) -> bool:
        return "paged" in self.stages

    def mark(self, stage: str, at: float | None = None) -> bool:
        """Record a stage once; True the first time."""
        if stage in self.stages:
            return False
        self.stages[stage] = time.time() if at is None else at
        return True

    def render(self) -> str:
        when = dt.datetime.fromtimestamp(self.rotated_at, dt.UTC).strftime("%H:%M:%S")
        lines = [f"Timeline (seconds since the unplanned rotation at {when} UTC):"]
        for stage, label in STAGES:
            seconds = self.seconds(stage)
            text = f"{seconds:+7.1f}s" if seconds is not None else "    -   "
            name = f": {self.alertname}" if stage in {"pending", "firing"} and seconds else ""
            lines.append(f"  {text}  {label}{name}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = {stage: self.seconds(stage) for stage, _ in STAGES}
        return data


def consumer_failures(metrics_text: str) -> float:
    """Pin failures the consumer has counted, from its /metrics text."""
    return consumer_validations(metrics_text, failed=True)


def consumer_validations(
    metrics_text: str, *, failed: bool, enforced: bool | None = None, **labels: str
) -> float:
    """Pin validations the consumer has counted, from its /metrics text: failed or ok, of
    devices that enforced, or not, or both (None), with these label values (app=, host=)."""
    if enforced is not None:
        labels["enforced"] = str(enforced).lower()
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "pinwatch_pin_validations":
            continue
        for sample in family.samples:
            have = sample.labels
            if not sample.name.endswith("_total") or (have.get("result") != "ok") != failed:
                continue
            if all(have.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class TimelineWatcher:
    """Polls each stage until the page arrives. `pages()` returns the delivered firing pages as
    (time.time(), alertname, description). Every page-severity alert's pending and firing
    times are kept; the timeline shows those of the alert that paged."""

    def __init__(
        self,
        timeline: Timeline,
        *,
        tally: SendOutcomes,
        consumer_url: str,
        prometheus_url: str,
        pages: Callable[[], list[tuple[float, str, str]]],
        say: Callable[[str], None] = print,
        poll_seconds: float = 0.5,
    ) -> None:
        self.timeline = timeline
        self.tally = tally
        self.consumer_url = consumer_url
        self.prometheus_url = prometheus_url
        self.pages = pages
        self.say = say
        self.poll_seconds = poll_seconds
        self.alerts: dict[str, dict[str, float]] = {}  # alertname -> {"pending": t, "firing": t}

    async def run(self, seconds: float) -> Timeline:
        """Poll until the page arrives or `seconds` pass."""
        deadline = time.monotonic() + seconds
        last_status = time.monotonic()
        async with httpx.AsyncClient(timeout=5.0) as client:
            while not self.timeline.complete and time.monotonic() < deadline:
                await self._poll(client)
                if time.monotonic() - last_status >= 10 and not self.timeline.complete:
                    last_status = time.monotonic()
                    self.say(self._waiting())
                await asyncio.sleep(self.poll_seconds)
        return self.timeline

    def _since(self, at: float) -> str:
        return f"  {at - self.timeline.rotated_at:+7.1f}s  "

    def _mark(self, stage: str, at: float | None = None) -> None:
        if self.timeline.mark(stage, at):
            at = self.timeline.stages[stage]
            self.say(self._since(at) + dict(STAGES)[stage])

    async def _poll(self, client: httpx.AsyncClient) -> None:
        t = self.timeline
        sent = self.tally.first_failure_sent
        if sent is not None and sent >= t.rotated_at:
            self._mark("sent", sent)
        if "stored" not in t.stages:
            try:
                response = await client.get(f"{self.consumer_url}/metrics")
                if consumer_failures(response.text) > 0:
                    self._mark("stored")
            except httpx.HTTPError:
                pass
        if "scraped" not in t.stages:
            result = await self._query(FAILURES_QUERY)
            if result and float(result[0]["value"][1]) > 0:
                self._mark("scraped")
        await self._alerts()
        for at, name, text in self.pages():
            if at < t.rotated_at:
                continue
            if "firing" not in self.alerts.get(name, {}):
                await self._alerts()  # the page can beat our last look at Prometheus
            seen = self.alerts.get(name, {})
            t.alertname, t.page = name, text
            for stage in ("pending", "firing"):
                if stage in seen:
                    t.mark(stage, seen[stage])
            self.say(self._since(at) + dict(STAGES)["paged"] + f" ({name})")
            t.mark("paged", at)
            break

    async def _query(self, expr: str) -> list[dict[str, Any]]:
        try:
            return await asyncio.to_thread(query, self.prometheus_url, expr)
        except (MonitoringError, httpx.HTTPError):
            return []

    async def _alerts(self) -> None:
        try:
            alerts = await asyncio.to_thread(prometheus_alerts, self.prometheus_url)
        except (MonitoringError, httpx.HTTPError):
            return
        now = time.time()
        for alert in alerts:
            labels = alert.get("labels", {})
            if labels.get("severity") != "page":
                continue
            name = labels.get("alertname", "?")
            seen = self.alerts.setdefault(name, {})
            if "pending" not in seen:
                # Prometheus' own clock for when the rule's condition started to hold.
                seen["pending"] = _parse_time(alert.get("activeAt")) or now
                self.say(self._since(seen["pending"]) + f"alert pending: {name}")
            if alert.get("state") == "firing" and "firing" not in seen:
                seen["firing"] = now
                self.say(self._since(now) + f"alert firing: {name}")

    def _waiting(self) -> str:
        t = self.timeline
        nxt = next((label for stage, label in STAGES if stage not in t.stages), "")
        if "scraped" in t.stages:
            nxt = (
                "a page (alerts: "
                + (
                    ", ".join(
                        f"{n} {'firing' if 'firing' in s else 'pending'}"
                        for n, s in self.alerts.items()
                    )
                    or "none yet"
                )
                + ")"
            )
        return (
            f"  {time.time() - t.rotated_at:+7.1f}s  ... waiting for {nxt}; "
            f"sent {self.tally.requests} requests, {self.tally.pin_failures} pin failures "
            f"from {len(self.tally.devices_failing)} devices"
        )


def _parse_time(value: str | None) -> float | None:
    """Prometheus' RFC 3339 timestamps (nanosecond fractions) as time.time() values."""
    if not value:
        return None
    try:
        head, _, frac = value.rstrip("Z").partition(".")
        base = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC).timestamp()
        return base + (float(f"0.{frac}") if frac else 0.0)
    except ValueError:
        return None
