"""`pinwatch up` and `pinwatch demo` as processes in tests: an environment of the test's own
(data directory, topics, ports, the session's broker when one is shared), the stack started
until it prints its ready text, and the processes a test leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from devstack.localkafka import free_ports
from tests.support.paths import REPO


def stack_env(data_dir: Path, own_ports: bool = False) -> tuple[dict[str, str], list[str]]:
    """Environment and extra flags: a data dir of the test's own, and the session's broker
    (with topics of the test's own) when the tests reuse one. `own_ports`: free ports for
    `pinwatch up`, which otherwise uses the settings' (the demo picks its own)."""
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
    bootstrap = os.environ.get("PINWATCH_TEST_KAFKA_BOOTSTRAP")
    if own_ports:
        names = ("INGEST", "CONSUMER", "PROMETHEUS", "ALERTMANAGER", "KAFKA_CONTROLLER", "PROBE")
        *ports, broker_port = free_ports(len(names) + 1)
        for name, port in zip(names, ports, strict=True):
            env[f"PINWATCH_{name}_PORT"] = str(port)
        if not bootstrap:
            env["PINWATCH_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{broker_port}"
    return env, (["--kafka-bootstrap", bootstrap] if bootstrap else [])


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (e.g. a data directory)."""
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


def start_up(env: dict[str, str], flags: list[str]) -> tuple[subprocess.Popen[str], str]:
    """`pinwatch up` until it prints its ready text; returns the process and what it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinwatch.cli", "up", *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            return proc, "".join(lines)
    proc.kill()
    raise AssertionError("pinwatch up did not get ready:\n" + "".join(lines))
