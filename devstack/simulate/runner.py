"""Running a scenario in time: every device reports once per interval at its own offset, the
scenario's change happens at `change_after` seconds (or when the caller says so), and the run
stops at `duration` seconds or `max_requests` requests, whichever comes first."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Callable, Iterator

from devstack.simulate.emit import Chains, Request, device_requests
from devstack.simulate.population import Population
from devstack.simulate.remote import RemotePolicy
from devstack.simulate.scenarios import Scenario
from devstack.simulate.sender import Sender, SendOutcomes

TICK_SECONDS = 0.25


def generate(
    population: Population,
    scenario: Scenario,
    chains: Chains,
    *,
    intervals: int,
    changed: bool | Callable[[int], bool],
    seed: int = 1,
) -> Iterator[Request]:
    """Every request the population sends over `intervals` report intervals, without clocks or
    I/O: what benchmarks and unit tests use. `changed` may depend on the interval index."""
    rng = random.Random(seed)
    for i in range(intervals):
        is_changed = changed(i) if callable(changed) else changed
        for device in population.devices:
            yield from device_requests(
                population, scenario, device, changed=is_changed, chains=chains, rng=rng
            )


Progress = Callable[["Simulation"], None]


class Simulation:
    def __init__(
        self,
        population: Population,
        scenario: Scenario,
        chains: Chains,
        sender: Sender,
        *,
        seed: int = 1,
        max_requests: int = 100_000,
        remote: RemotePolicy | None = None,
    ) -> None:
        self.population = population
        self.remote = remote  # devices fetch and obey the signed policy document
        self.scenario = scenario
        self.chains = chains
        self.sender = sender
        self.max_requests = max_requests
        self.rng = random.Random(seed)
        self.started: float | None = None  # time.monotonic()
        self.changed_at: float | None = None  # time.time() of the scenario's change
        self.restored_at: float | None = None  # time.time() the change was undone (the fix)
        self.planned = 0
        self._inflight: set[asyncio.Task[int]] = set()

    @property
    def tally(self) -> SendOutcomes:
        return self.sender.tally

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def change(self) -> None:
        """Apply the scenario's change from the next report on (idempotent)."""
        if self.changed_at is None:
            self.changed_at = time.time()

    def restore(self) -> None:
        """Undo the change from the next report on (the server fixed), once."""
        if self.changed_at is not None and self.restored_at is None:
            self.restored_at = time.time()

    @property
    def changed(self) -> bool:
        return self.changed_at is not None and self.restored_at is None

    async def run(
        self,
        duration: float,
        *,
        change_after: float | None = None,
        progress: Progress | None = None,
        progress_every: float = 5.0,
        stop: asyncio.Event | None = None,
    ) -> SendOutcomes:
        """Send until `duration` seconds pass, `max_requests` are sent or `stop` is set."""
        interval = self.population.config.report_interval
        self.started = time.monotonic()
        next_report = {d.id: d.offset for d in self.population.devices}
        last_progress = 0.0
        try:
            while self.elapsed < duration and self.planned < self.max_requests:
                if stop is not None and stop.is_set():
                    break
                now = self.elapsed
                if change_after is not None and now >= change_after:
                    self.change()
                if self.remote is not None:
                    await self.remote.refresh()
                wall = dt.datetime.now(dt.UTC)
                for device in self.population.devices:
                    if next_report[device.id] > now:
                        continue
                    next_report[device.id] += interval
                    for request in device_requests(
                        self.population,
                        self.scenario,
                        device,
                        changed=self.changed,
                        chains=self.chains,
                        rng=self.rng,
                        now=wall,
                    ):
                        if self.planned >= self.max_requests:
                            break
                        self.planned += 1
                        task = asyncio.create_task(self.sender.send(request))
                        self._inflight.add(task)
                        task.add_done_callback(self._inflight.discard)
                if progress is not None and now - last_progress >= progress_every:
                    last_progress = now
                    progress(self)
                await asyncio.sleep(TICK_SECONDS)
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
        finally:
            for task in list(self._inflight):
                task.cancel()
        if progress is not None:
            progress(self)
        return self.tally


def describe(sim: Simulation) -> str:
    """One progress line: what was sent and what ingest said."""
    tally = sim.tally
    statuses = " ".join(f"{code or 'no-answer'}:{n}" for code, n in sorted(tally.statuses.items()))
    changed = "no" if sim.changed_at is None else "undone" if sim.restored_at else "yes"
    remote = f" {sim.remote.describe()}" if sim.remote is not None else ""
    return (
        f"t={sim.elapsed:5.1f}s sent={tally.requests} [{statuses or '-'}] "
        f"reports={tally.accepted['reports']} ok={tally.accepted['pin:ok']} "
        f"pin_failures={tally.pin_failures} (enforced {tally.enforced_failures}) network_errors="
        f"{sum(v for k, v in tally.accepted.items() if k.startswith('error:'))} "
        f"failing_devices={len(tally.devices_failing)} changed={changed}{remote}"
    )
