"""The frozen migrations against the real ClickHouse engine (chDB): a database built fresh and
one upgraded from every earlier version end up identical, the consumer's column lists match the
tables, and a released migration whose text changed is refused."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest

from consumers.migrations import (
    LATEST,
    LOCK_TABLE,
    MIGRATIONS,
    MigrationError,
    Target,
    lock_holder,
    migrate,
    unlock,
)
from consumers.schema import EVIDENCE_COLUMNS, REPORT_COLUMNS
from consumers.store import Store, StoreError
from pinwatch.settings import Settings


async def _schema(store: Store, db: str) -> dict[str, str]:
    """SHOW CREATE of every table and view, with the database name taken out."""
    rows = await store.query(
        "SELECT name FROM system.tables WHERE database = {db:String} "
        "AND name != 'schema_migrations' ORDER BY name",
        {"db": db},
    )
    out = {}
    for (name,) in rows:
        text = await store.scalar(f"SHOW CREATE TABLE {db}.{name}")
        out[name] = re.sub(rf"\b{db}\.", "DB.", str(text))
    return out


async def test_fresh_and_upgraded_databases_are_identical(
    make_settings: Callable[..., Settings],
    store: Store,
) -> None:
    fresh = make_settings()
    assert await store.migrate(fresh) == list(range(1, LATEST + 1))
    expected = await _schema(store, fresh.clickhouse_database)
    assert {"reports", "rollup_minute", "evidence", "report_ids"} <= set(expected)
    for start in range(1, LATEST):
        upgraded = fresh.model_copy(
            update={"clickhouse_database": f"{fresh.clickhouse_database}_from{start}"}
        )
        assert await store.migrate(upgraded, to=start) == list(range(1, start + 1))
        assert await store.migrate(upgraded) == list(range(start + 1, LATEST + 1))
        got = await _schema(store, upgraded.clickhouse_database)
        assert got == expected, f"upgraded from version {start} differs from fresh"
    assert await store.migrate(fresh) == [], "a second run applies nothing"


async def test_the_consumers_columns_are_the_tables_columns(
    make_settings: Callable[..., Settings],
    store: Store,
) -> None:
    settings = make_settings()
    await store.migrate(settings)
    for table, columns in (("reports", REPORT_COLUMNS), ("evidence", EVIDENCE_COLUMNS)):
        rows = await store.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} "
            "AND table = {table:String} ORDER BY position",
            {"db": settings.clickhouse_database, "table": table},
        )
        assert tuple((str(n), str(t)) for n, t in rows) == columns, table


async def test_an_edited_released_migration_is_refused(
    make_settings: Callable[..., Settings],
    store: Store,
) -> None:
    settings = make_settings()
    await store.migrate(settings)
    first = MIGRATIONS[0]
    statements = tuple(s.replace("`detail` String", "`detail` Text") for s in first.statements)
    edited = dataclasses.replace(first, statements=statements)
    with pytest.raises(StoreError, match="migration 1 .* was applied .* new migration") as err:
        await store.run(lambda: migrate(store._get_client(), settings, migrations=(edited,)))
    assert isinstance(err.value.__cause__, MigrationError)
    # Whitespace is not a change.
    reflowed = dataclasses.replace(
        first, statements=tuple(s.replace("\n", "\n  ") for s in first.statements)
    )
    await store.run(lambda: migrate(store._get_client(), settings, migrations=(reflowed,)))


async def test_a_database_migrated_before_checksums_gets_them_recorded(
    make_settings: Callable[..., Settings],
    store: Store,
) -> None:
    settings = make_settings()
    db = settings.clickhouse_database
    await store.migrate(settings)
    # As an older pinwatch left it: no checksum column.
    await store.command(f"ALTER TABLE {db}.schema_migrations DROP COLUMN checksum")
    assert await store.migrate(settings) == []
    rows = await store.query(
        f"SELECT version, checksum FROM {db}.schema_migrations WHERE checksum != ''"
    )
    assert {int(v): c for v, c in rows} == {m.version: m.checksum for m in MIGRATIONS}


async def test_a_held_lock_stops_a_second_migrator_naming_the_holder(
    make_settings: Callable[..., Settings],
    store: Store,
) -> None:
    settings = make_settings(migrate_lock_timeout_seconds=1.0)
    store = Store.from_settings(settings)
    db = settings.clickhouse_database
    try:
        await store.migrate(settings)
        # A migrator that died while holding the lock left it behind.
        await store.command(
            f"CREATE TABLE {db}.{LOCK_TABLE} (held UInt8) ENGINE = Memory "
            "COMMENT 'ci-runner-7 pid 4242 since 2026-12-01T00:00:00Z'"
        )
        with pytest.raises(StoreError, match="ci-runner-7 pid 4242 .* --unlock"):
            await store.migrate(settings)
        await store.run(lambda: unlock(store._get_client(), Target.of(settings)))
        assert await store.migrate(settings) == []
        assert await store.run(lambda: lock_holder(store._get_client(), db)) is None
    finally:
        await store.close()
