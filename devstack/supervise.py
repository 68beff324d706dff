"""Keeping `pinwatch up` running: a component that exits is started again, with backoff.

`pinwatch up` is left running for hours, so one part dying (a consumer SIGKILLed, a broker out
of memory) must not take the rest down: Prometheus and Alertmanager are what would page about
it. The `Supervisor` looks at every component once a tick, without blocking on any of them:

    running  --exits-->  waiting  --delay passed-->  starting  --ready-->  running
                            ^                            |
                            +---- exits, or not ready ---+
                                  within ready_timeout

Each step says what happened in a line for people ("consumer exited after 63.2 s (status -9,
SIGKILL), restarting in 1 s", "consumer failed to start: ...", with the tail of its log) and in
a structured log line (`stack_component_exited`, `stack_component_start_failed`,
`stack_component_restarted`). The delay doubles with each exit or failed start in a row, up to
`Backoff.maximum`, and starts again from `Backoff.initial` once a component stayed up
`Backoff.reset_after` seconds: a crash loop slows down, a component that ran for a day and
died once comes back at once. Nothing here gives up; a component that never comes back stays
down, and the pipeline alerts page about it (docs/operations.md says which and how fast).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from devstack.processes import tail
from pinwatch.logs import event

log = logging.getLogger("devstack.supervise")

Say = Callable[[str], None]
LOG_TAIL_LINES = 12


class Component(Protocol):
    """What the supervisor needs of a part of the stack (devstack.stack.ChildCommand, the
    engines of devstack.monitoring, devstack.localkafka.LocalKafka)."""

    @property
    def log_path(self) -> Path: ...

    def launch(self) -> None:
        """Start the process and return at once (raises when it cannot even be spawned)."""

    def exit_status(self) -> int | None:
        """The exit status once the process ended, None while it runs (or was never started)."""

    def ready(self) -> bool:
        """One readiness check, bounded to a few seconds."""

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 30.0
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("restart delays need 0 < initial <= maximum")
        if self.reset_after <= 0:
            raise ValueError("reset_after must be positive")

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next start, after `failures` exits in a row (0: the
        first)."""
        # min() before the power would overflow for a component that failed a thousand times
        return min(self.maximum, self.initial * 2 ** min(failures, 62))


class State(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"  # exited; started again at `due`
    STARTING = "starting"  # launched, not ready yet


def describe_status(status: int) -> str:
    """`status 3`, or `status -9, SIGKILL` for a signal (Popen's negative returncode)."""
    if status < 0:
        try:
            return f"status {status}, {signal.Signals(-status).name}"
        except ValueError:
            pass
    return f"status {status}"


@dataclass
class Supervised:
    name: str
    component: Component
    state: State = State.RUNNING
    since: float = 0.0  # when the current state began (clock)
    due: float = 0.0  # WAITING: when to start again
    failures: int = 0  # exits and failed starts in a row, for the backoff
    restarts: int = 0  # starts after the first, ever
    down_since: float = 0.0  # when it last stopped running


@dataclass
class Supervisor:
    components: Sequence[tuple[str, Component]]
    backoff: Backoff = field(default_factory=Backoff)
    ready_timeout: float = 90.0
    say: Say = print
    clock: Callable[[], float] = time.monotonic
    parts: list[Supervised] = field(init=False)

    def __post_init__(self) -> None:
        now = self.clock()
        self.parts = [Supervised(name, c, since=now) for name, c in self.components]

    def tick(self) -> None:
        """Look at every component once: notice exits, start what is due, check readiness."""
        for part in self.parts:
            if part.state is State.RUNNING:
                self._check_running(part)
            elif part.state is State.WAITING:
                if self.clock() >= part.due:
                    self._launch(part)
            else:
                self._check_starting(part)

    def state(self, name: str) -> Supervised:
        return next(p for p in self.parts if p.name == name)

    # --- the transitions ------------------------------------------------------------------
    def _check_running(self, part: Supervised) -> None:
        status = part.component.exit_status()
        if status is None:
            return
        now = self.clock()
        ran = now - part.since
        if ran >= self.backoff.reset_after:
            part.failures = 0  # it ran a good while: not a crash loop
        delay = self._wait(part, now)
        part.down_since = now
        self.say(
            f"  {part.name} exited after {ran:.1f} s ({describe_status(status)}), "
            f"restarting in {delay:g} s{self._log_tail(part)}"
        )
        event(
            log,
            "stack_component_exited",
            logging.WARNING,
            component=part.name,
            status=status,
            ran_seconds=round(ran, 1),
            restart_in_seconds=delay,
            restarts=part.restarts,
        )

    def _launch(self, part: Supervised) -> None:
        part.restarts += 1
        part.state, part.since = State.STARTING, self.clock()
        try:
            part.component.launch()
        except Exception as exc:  # noqa: BLE001 - any reason it cannot start is reported
            self._failed_start(part, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")

    def _check_starting(self, part: Supervised) -> None:
        status = part.component.exit_status()
        waited = self.clock() - part.since
        if status is not None:
            self._failed_start(part, f"exited after {waited:.1f} s ({describe_status(status)})")
        elif part.component.ready():
            now = self.clock()
            part.state, part.since = State.RUNNING, now
            self.say(
                f"  {part.name} is back (restart {part.restarts}, down {now - part.down_since:.1f}"
                " s)"
            )
            event(
                log,
                "stack_component_restarted",
                component=part.name,
                restarts=part.restarts,
                down_seconds=round(now - part.down_since, 1),
            )
        elif waited >= self.ready_timeout:
            part.component.stop()
            self._failed_start(part, f"not ready after {waited:.0f} s")

    def _failed_start(self, part: Supervised, why: str) -> None:
        delay = self._wait(part, self.clock())
        self.say(
            f"  {part.name} failed to start (restart {part.restarts}): {why}; retrying in "
            f"{delay:g} s{self._log_tail(part)}"
        )
        event(
            log,
            "stack_component_start_failed",
            logging.WARNING,
            component=part.name,
            why=why,
            restart_in_seconds=delay,
            restarts=part.restarts,
        )

    def _wait(self, part: Supervised, now: float) -> float:
        delay = self.backoff.delay(part.failures)
        part.failures += 1
        part.state, part.since, part.due = State.WAITING, now, now + delay
        return delay

    def _log_tail(self, part: Supervised) -> str:
        path = part.component.log_path
        lines = tail(path, LOG_TAIL_LINES).splitlines()
        return f"\n    log: {path}" + "".join(f"\n    | {line}" for line in lines)
