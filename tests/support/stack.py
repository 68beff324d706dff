"""Whole local stacks for the end-to-end tests: `pinwatch up` and `pinwatch demo` as a user runs
them (their environment: a data directory and ports of the test's own; the command as a process
whose output is read as it comes; the processes a stack left behind), and a `devstack.stack.Stack`
run from the test itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.localkafka import free_ports
from devstack.stack import Stack, StackOptions
from pinwatch.settings import Settings
from tests.support.paths import REPO


def stack_env(
    data_dir: Path, own_ports: bool = False, kafka_bootstrap: str | None = None
) -> tuple[dict[str, str], list[str]]:
    """Environment and extra flags: a data dir of the test's own, and a running broker (the
    session's, or PINWATCH_TEST_KAFKA_BOOTSTRAP's) with topics of the test's own when given.
    `own_ports`: free ports for `pinwatch up`, which otherwise uses the settings' (the demo
    picks its own)."""
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "PINWATCH_DATA_DIR": str(data_dir),
        "PINWATCH_LOG_FORMAT": "text",
        "PINWATCH_KAFKA_TOPIC": f"demo-{suffix}",
        "PINWATCH_KAFKA_DEAD_LETTER_TOPIC": f"demo-dl-{suffix}",
        "PINWATCH_KAFKA_CONSUMER_GROUP": f"demo-{suffix}",
    }
    for name in ("PINWATCH_POLICY_FILE", "PINWATCH_PUBLIC_ROOTS_FILE", "PINWATCH_CLICKHOUSE_DSN"):
        env.pop(name, None)  # the demo's own: the example policy and the demo PKI
    bootstrap = kafka_bootstrap or os.environ.get("PINWATCH_TEST_KAFKA_BOOTSTRAP")
    if own_ports:
        names = ("INGEST", "CONSUMER", "PROMETHEUS", "ALERTMANAGER", "KAFKA_CONTROLLER", "PROBE")
        *ports, broker_port = free_ports(len(names) + 1)
        for name, port in zip(names, ports, strict=True):
            env[f"PINWATCH_{name}_PORT"] = str(port)
        if not bootstrap:
            env["PINWATCH_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{broker_port}"
    return env, (["--kafka-bootstrap", bootstrap] if bootstrap else [])


def processes_mentioning(text: str) -> list[str]:
    """`pid: command line` of live processes that mention `text` (e.g. a data directory) in
    their command line or as their PINWATCH_DATA_DIR."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or f"PINWATCH_DATA_DIR={text}" in environ:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def pids_of(data_dir: Path, command: str) -> list[int]:
    """Pids of the `pinwatch <command>` processes of the stack in `data_dir`."""
    needle = f"pinwatch.cli {command}"
    return [
        int(line.split(":", 1)[0]) for line in processes_mentioning(str(data_dir)) if needle in line
    ]


READY_LINE = "Ctrl-C stops everything"


class UpProcess:
    """`pinwatch up` as a process; every line it prints (stdout and stderr) is kept as it
    comes, so a test can wait for one while the stack runs."""

    def __init__(self, env: dict[str, str], flags: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pinwatch.cli", "up", *flags],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line)

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def wait_for(self, check: Callable[[str], bool], timeout: float) -> str | None:
        """The first line (from the start) for which `check` holds, waiting up to `timeout`
        seconds for it; None when it never came or `up` ended first."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            with self._lock:
                lines = self.lines[seen:]
            for line in lines:
                if check(line):
                    return line
            seen += len(lines)
            if time.monotonic() > deadline or (self.proc.poll() is not None and not lines):
                return None
            time.sleep(0.2)

    def wait_ready(self, timeout: float = 180) -> str:
        if self.wait_for(lambda line: READY_LINE in line, timeout) is None:
            self.kill()
            raise AssertionError("pinwatch up did not get ready:\n" + self.text)
        return self.text

    def interrupt(self, timeout: float = 90) -> int:
        """Ctrl-C, as a user stops it; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_up(env: dict[str, str], flags: list[str]) -> tuple[UpProcess, str]:
    """`pinwatch up` until it prints its ready text; returns it and what it printed."""
    up = UpProcess(env, flags)
    return up, up.wait_ready()


@contextmanager
def local_stack(
    settings: Settings, data_dir: Path, *, kafka_bootstrap: str, interval: float
) -> Iterator[Stack]:
    """The stack `pinwatch up` runs (ingest, consumer, prober, Prometheus with the shipped
    rules, Alertmanager with the shipped routing, the page receiver), as processes on free
    ports, on the session's broker with the settings' topics, scraping and evaluating every
    `interval` seconds. Its ClickHouse is chDB in `data_dir` (the session's chDB directory
    belongs to the test process)."""
    config = settings.model_copy(
        update={"clickhouse_dsn": Settings.model_fields["clickhouse_dsn"].default}
    )
    stack = Stack(
        config,
        StackOptions(
            data_dir=data_dir,
            fresh=True,
            free_ports=True,
            kafka_bootstrap=kafka_bootstrap,
            scrape_interval=interval,
            evaluation_interval=interval,
            local_pages_only=True,
        ),
        say=lambda _line: None,
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
