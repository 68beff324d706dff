"""Child processes that pinwatch starts in their own process group (Kafka, Prometheus,
Alertmanager, the stack's ingest and consumer): their pid files, command lines, logs, and
stopping a whole group, also from another process that only has the pid file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None when it is missing or unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> str:
    """The process's command line, space-separated ("" when it is gone). A pid file can
    outlive its process and the number be reused: check this before signalling."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int, process: subprocess.Popen[bytes] | None) -> bool:
    """Whether `pid` runs; through `process` when it is our child (so it is reaped)."""
    if process is not None:
        return process.poll() is None
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by `pid`; a group already gone is not an error."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def stop_group(
    pid: int, process: subprocess.Popen[bytes] | None, *, timeout: float, poll: float
) -> None:
    """SIGTERM the group, SIGKILL it if `pid` still runs after `timeout` (checked every `poll`
    seconds), then reap our child."""
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid, process):
        time.sleep(poll)
    if alive(pid, process):
        signal_group(pid, signal.SIGKILL)
    if process is not None:
        process.wait(timeout=5)


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log ("" when it cannot be read), for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
