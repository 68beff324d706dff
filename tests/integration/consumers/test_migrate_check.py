"""`pinwatch migrate --check [--wait SECONDS]` against the real ClickHouse engine (chDB): what a
consumer's initContainer runs on Kubernetes while the migration Job upgrades the schema
(deploy/k8s/base/consumer.yaml). It must say "pending" before the migration, "current" after,
and a waiting check must return as soon as the Job's migration lands, not at its deadline."""

from __future__ import annotations

import argparse
import logging
import threading
import time
import uuid

import pytest

from consumers import cmd_migrate
from consumers.migrations import MIGRATIONS
from pinwatch.settings import Settings


@pytest.fixture
def settings(chdb_dsn: str) -> Settings:
    return Settings(clickhouse_dsn=chdb_dsn, clickhouse_database=f"mig_{uuid.uuid4().hex[:8]}")


def command(settings: Settings, *argv: str) -> int:
    """`pinwatch migrate ARGV` as the CLI parses it, in this process (chDB is one per process)."""
    parser = argparse.ArgumentParser()
    cmd_migrate.add_arguments(parser)
    return cmd_migrate.run(parser.parse_args(argv), settings)


def check(settings: Settings, wait: float = 0.0) -> int:
    return command(settings, "--check", "--wait", str(wait))


def migrate(settings: Settings) -> int:
    return command(settings)


def test_check_tells_pending_from_current(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    every = [m.version for m in MIGRATIONS]
    assert check(settings) == cmd_migrate.PENDING
    assert check(settings) == cmd_migrate.PENDING  # --check changed nothing
    assert capsys.readouterr().err.count(f"migrations {every} pending") == 2
    assert migrate(settings) == 0
    assert f"applied migrations {every}" in capsys.readouterr().out
    assert check(settings) == 0
    assert "schema up to date" in capsys.readouterr().out


def test_check_with_wait_returns_when_the_migration_lands(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pinwatch.migrate")
    result: dict[str, float] = {}

    def waiter() -> None:
        started = time.monotonic()
        result["code"] = check(settings, wait=120)
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    # The waiter must really be waiting (it has seen the schema pending) before the Job runs.
    deadline = time.monotonic() + 60
    while not any(r.getMessage() == "migrate_waiting" for r in caplog.records):
        assert time.monotonic() < deadline and thread.is_alive(), result
        time.sleep(0.05)
    migrate(settings)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert result["code"] == 0
    assert result["seconds"] < 60  # well before its 120 s deadline


def test_check_with_wait_gives_up_at_its_deadline(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert check(settings, wait=1.0) == cmd_migrate.PENDING
    assert time.monotonic() - started >= 1.0
    assert "pending" in capsys.readouterr().err


def test_wait_without_check_is_refused(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert command(settings, "--wait", "5") == 2
    assert "--wait goes with --check" in capsys.readouterr().err
