"""`pinwatch migrate --print`: the statements a fresh database gets, single node or cluster,
without touching any ClickHouse."""

from __future__ import annotations

import os
import subprocess
import sys

from consumers.migrations import MIGRATIONS


def _print(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PINWATCH_CLICKHOUSE_DSN": "http://user:secret@127.0.0.1:1"}
    return subprocess.run(
        [sys.executable, "-m", "pinwatch.cli", "migrate", "--print", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_print_shows_the_single_node_schema() -> None:
    done = _print()
    assert done.returncode == 0, done.stderr
    statements = [s for s in done.stdout.split(";\n\n") if s.strip()]
    assert len(statements) == 3 + sum(len(m.statements) for m in MIGRATIONS)
    assert "ON CLUSTER" not in done.stdout and "Replicated" not in done.stdout
    assert "CREATE TABLE IF NOT EXISTS pinwatch.reports (" in done.stdout


def test_print_with_a_cluster_shows_its_form() -> None:
    done = _print("--cluster", "analytics")
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE IF NOT EXISTS pinwatch.reports_local ON CLUSTER 'analytics'" in done.stdout
    assert "ENGINE = Distributed('analytics', 'pinwatch', 'reports_local', cityHash64(device))" in (
        done.stdout
    )
    assert "secret" not in done.stdout + done.stderr


def test_a_bad_cluster_name_is_refused_clearly() -> None:
    done = _print("--cluster", "x'; DROP DATABASE pinwatch; --")
    assert done.returncode == 2
    assert "cluster name must be" in done.stderr and "Traceback" not in done.stderr
