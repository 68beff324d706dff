"""`pinwatch migrate`: create or upgrade the ClickHouse schema (consumers/migrations/)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from pinwatch.settings import Settings

HELP = "create or upgrade the ClickHouse schema (idempotent; records applied migrations)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the DSN, database and retention come from the settings."""


def run(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.migrations import MigrationError
    from consumers.store import Store, StoreError

    async def go() -> list[int]:
        store = Store.from_settings(settings)
        try:
            return await store.migrate(settings)
        finally:
            await store.close()

    try:
        applied = asyncio.run(go())
    except (MigrationError, StoreError) as exc:
        print(f"pinwatch migrate: {exc}", file=sys.stderr)
        return 1
    where = f"{settings.clickhouse_shown} (database {settings.clickhouse_database})"
    print(
        f"applied migrations {applied} to {where}" if applied else f"schema up to date in {where}"
    )
    return 0
