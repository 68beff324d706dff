"""The supervisor of `pinwatch up` as a state machine: fake parts and a fake clock, so every
transition, delay and message is checked without a process (tests/e2e/test_supervision.py
kills real ones)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from devstack.supervise import Backoff, State, Supervisor, describe_status


class FakePart:
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.status: int | None = None  # None: running
        self.is_ready = True
        self.launches = 0
        self.stops = 0
        self.refuse: Exception | None = None

    def launch(self) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.launches += 1
        self.status = None

    def exit_status(self) -> int | None:
        return self.status

    def ready(self) -> bool:
        return self.is_ready

    def stop(self) -> None:
        self.stops += 1
        self.status = -15


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path):
    log = tmp_path / "consumer.log"
    log.write_text("starting\nTraceback: policy file not found\n")
    part, other, clock, lines = FakePart(log), FakePart(tmp_path / "x.log"), Clock(), []
    supervisor = Supervisor(
        [("consumer", part), ("prometheus", other)],
        Backoff(initial=1, maximum=8, reset_after=60),
        ready_timeout=30,
        say=lines.append,
        clock=clock,
    )
    return supervisor, part, other, clock, lines


def test_backoff_doubles_up_to_its_maximum():
    backoff = Backoff(initial=1, maximum=30, reset_after=60)
    assert [backoff.delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(10_000) == 30  # no overflow after a very long crash loop
    with pytest.raises(ValueError):
        Backoff(initial=5, maximum=1)
    with pytest.raises(ValueError):
        Backoff(reset_after=0)


def test_describe_status_names_the_signal():
    assert describe_status(3) == "status 3"
    assert describe_status(-9) == "status -9, SIGKILL"


def test_an_exit_is_reported_with_its_run_time_and_log_and_restarted_after_the_delay(world):
    supervisor, part, other, clock, lines = world
    clock.now += 63.2
    part.status = -9
    supervisor.tick()
    assert supervisor.state("consumer").state is State.WAITING
    assert lines[0].startswith(
        "  consumer exited after 63.2 s (status -9, SIGKILL), restarting in 1 s"
    )
    assert "log: " in lines[0] and "| Traceback: policy file not found" in lines[0]
    assert other.launches == 0 and supervisor.state("prometheus").state is State.RUNNING

    clock.now += 0.5
    supervisor.tick()
    assert part.launches == 0  # not before the delay
    clock.now += 0.5
    supervisor.tick()
    assert part.launches == 1 and supervisor.state("consumer").state is State.STARTING
    supervisor.tick()  # ready
    assert supervisor.state("consumer").state is State.RUNNING
    assert lines[-1] == "  consumer is back (restart 1, down 1.0 s)"


def test_a_crash_loop_backs_off_and_a_long_run_resets_the_delay(world):
    supervisor, part, _, clock, lines = world

    def crash_after(seconds: float) -> str:
        clock.now += seconds
        part.status = 1
        supervisor.tick()  # exit noticed
        line = lines[-1]
        clock.now = supervisor.state("consumer").due
        supervisor.tick()  # launched
        supervisor.tick()  # ready
        assert supervisor.state("consumer").state is State.RUNNING
        return line

    delays = [crash_after(5).split("restarting in ")[1].split(" s")[0] for _ in range(6)]
    assert delays == ["1", "2", "4", "8", "8", "8"]
    # a run longer than reset_after is not part of the loop: back to the first delay
    assert "restarting in 1 s" in crash_after(61)
    assert "restarting in 2 s" in crash_after(5)
    assert supervisor.state("consumer").restarts == 8


def test_a_restart_that_exits_before_ready_is_a_failed_start_and_retried(world):
    supervisor, part, _, clock, lines = world
    part.status = 2
    supervisor.tick()
    clock.now += 1
    supervisor.tick()  # launched...
    part.status = 2  # ...and exits at once (the policy file is gone)
    clock.now += 0.4
    supervisor.tick()
    assert lines[-1].startswith(
        "  consumer failed to start (restart 1): exited after 0.4 s (status 2); retrying in 2 s"
    )
    assert supervisor.state("consumer").state is State.WAITING
    clock.now += 2
    supervisor.tick()
    assert part.launches == 2  # tried again, for as long as it takes


def test_a_restart_never_ready_is_stopped_after_the_ready_timeout(world):
    supervisor, part, _, clock, lines = world
    part.status = 1
    supervisor.tick()
    clock.now += 1
    part.is_ready = False
    supervisor.tick()  # launched, not ready
    clock.now += 29
    supervisor.tick()
    assert part.stops == 0
    clock.now += 1
    supervisor.tick()
    assert part.stops == 1
    assert "failed to start (restart 1): not ready after 30 s; retrying in 2 s" in lines[-1]


def test_a_part_that_cannot_even_be_spawned_is_retried(world):
    supervisor, part, _, clock, lines = world
    part.status = 1
    supervisor.tick()
    part.refuse = OSError("port 9092 is already in use\nmore detail")
    clock.now += 1
    supervisor.tick()
    expected = "failed to start (restart 1): OSError: port 9092 is already in use; retrying"
    assert expected in lines[-1]
    assert supervisor.state("consumer").state is State.WAITING


def test_each_restart_is_a_structured_log_line(world, caplog: pytest.LogCaptureFixture):
    supervisor, part, _, clock, _ = world
    caplog.set_level(logging.INFO, logger="devstack.supervise")
    clock.now += 10
    part.status = -9
    supervisor.tick()
    clock.now += 1
    supervisor.tick()
    supervisor.tick()
    events = [(r.getMessage(), r.levelname) for r in caplog.records]
    assert events == [
        ("stack_component_exited", "WARNING"),
        ("stack_component_restarted", "INFO"),
    ]
    exited = caplog.records[0].__dict__
    fields = {k: exited[k] for k in ("component", "status", "ran_seconds", "restart_in_seconds")}
    assert json.loads(json.dumps(fields)) == {
        "component": "consumer",
        "status": -9,
        "ran_seconds": 10.0,
        "restart_in_seconds": 1,
    }


def test_the_stack_hands_every_part_it_started_to_the_supervisor_and_the_demo_stops_at_one(
    tmp_path: Path,
):
    from devstack.stack import Stack, StackError, StackOptions
    from pinwatch.settings import Settings

    stack = Stack(Settings(data_dir=tmp_path), StackOptions(data_dir=tmp_path), say=lambda _: None)
    consumer, prometheus = FakePart(tmp_path / "consumer.log"), FakePart(tmp_path / "p.log")
    stack.consumer, stack.prometheus = consumer, prometheus  # type: ignore[assignment]
    assert [name for name, _ in stack.parts()] == ["consumer", "prometheus"]  # Kafka: not ours
    assert [p.name for p in stack.supervisor(Backoff()).parts] == ["consumer", "prometheus"]
    stack.check()  # all running
    consumer.log_path.write_text("boom\n")
    consumer.status = -9
    with pytest.raises(StackError) as raised:
        stack.check()
    assert str(raised.value).startswith("consumer exited: status -9, SIGKILL")
    assert "| boom" in str(raised.value)
