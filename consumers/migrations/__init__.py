"""The ClickHouse schema, as forward-only migrations applied by `pinwatch migrate`.

Each migration is a module of this package, `mNNNN_<what>.py`, holding its DDL written out
(`VERSION`, `NAME`, `STATEMENTS`). They are frozen: never computed from live constants and never
edited once released, because a database that applied migration N never sees a later edit of
it. `schema_migrations` records each applied migration with a checksum of its statements, and
`migrate` refuses to run when a released migration's text changed, naming it (the change belongs
in a new migration). The tables the consumer writes are described in consumers/schema.py, whose
column lists a test compares with what these migrations create.

Every table that receives inserts has `non_replicated_deduplication_window`, and the consumer
inserts with `insert_deduplication_token` + `deduplicate_blocks_in_dependent_materialized_views`
so a retried insert is dropped by the raw table and by every view alike.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import pkgutil
import re
from dataclasses import dataclass
from typing import Any

from pinwatch.logs import event
from pinwatch.settings import Settings

log = logging.getLogger("pinwatch.schema")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]  # formatted with db=, ttl_days= and dedup_seconds=

    @property
    def checksum(self) -> str:
        """Of the statements with whitespace collapsed: a reflowed line is not a change."""
        text = "\n;\n".join(" ".join(s.split()) for s in self.statements)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class MigrationError(RuntimeError):
    pass


_MODULE = re.compile(r"^m(\d{4})_\w+$")


def _load() -> tuple[Migration, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        match = _MODULE.match(info.name)
        if match is None:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if module.VERSION != int(match.group(1)):
            raise MigrationError(f"{info.name} declares VERSION {module.VERSION}")
        found.append(Migration(module.VERSION, module.NAME, tuple(module.STATEMENTS)))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must run 1..N: {[m.version for m in found]}")
    return tuple(found)


MIGRATIONS: tuple[Migration, ...] = _load()
LATEST = MIGRATIONS[-1].version

# Tables whose TTL follows settings.retention_days: re-applied on every run, so a changed setting
# takes effect without a new migration (the TTL a migration creates a table with is only where
# it starts).
TTL_TABLES: dict[str, str] = {
    "reports": "toDateTime(received_at)",
    "rollup_minute": "minute",
    "evidence": "hour",
    "evidence_hourly": "hour",
    "report_ids": "toDateTime(received_at)",
    "rollout_hourly": "hour",
    "rollout_network_hourly": "hour",
}


def _database(settings: Settings) -> str:
    db = settings.clickhouse_database
    if not db.replace("_", "").isalnum():
        raise MigrationError(f"clickhouse_database must be letters, digits and _: {db!r}")
    return db


def pending(client: Any, settings: Settings) -> list[int]:
    """Versions not yet recorded as applied (all of them before the first `migrate`); reads
    only, so a process without DDL rights can wait on it (`pinwatch migrate --check`)."""
    db = _database(settings)
    exists = client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} "
        "AND name = 'schema_migrations'",
        parameters={"db": db},
    ).result_rows[0][0]
    done: set[int] = set()
    if exists:
        rows = client.query(f"SELECT version FROM {db}.schema_migrations").result_rows
        done = {int(row[0]) for row in rows}
    return [m.version for m in MIGRATIONS if m.version not in done]


def migrate(
    client: Any,
    settings: Settings,
    *,
    to: int | None = None,
    migrations: tuple[Migration, ...] = MIGRATIONS,
) -> list[int]:
    """Apply every migration not yet recorded (up to version `to`, default all); returns the
    versions applied now.

    `client` is a clickhouse-connect client (sync); `consumers.store.Store.migrate` calls this
    off the event loop. Statements are `IF NOT EXISTS`, so a migration interrupted halfway is
    simply re-run.
    """
    db = _database(settings)
    command, query = client.command, client.query
    command(f"CREATE DATABASE IF NOT EXISTS {db}")
    command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime('UTC') DEFAULT now(), "
        "checksum String DEFAULT '') ENGINE = MergeTree ORDER BY version"
    )
    # Databases migrated before checksums were recorded.
    command(f"ALTER TABLE {db}.schema_migrations ADD COLUMN IF NOT EXISTS checksum String")
    recorded: dict[int, set[str]] = {}
    for version, checksum in query(
        f"SELECT version, checksum FROM {db}.schema_migrations"
    ).result_rows:
        recorded.setdefault(int(version), set()).add(str(checksum))
    applied: list[int] = []
    for migration in migrations:
        if to is not None and migration.version > to:
            break
        sums = recorded.get(migration.version)
        if sums is not None:
            _check_unchanged(command, db, migration, sums)
            continue
        for statement in migration.statements:
            try:
                command(
                    statement.format(
                        db=db,
                        ttl_days=settings.retention_days,
                        dedup_seconds=int(settings.dedup_window_seconds),
                    )
                )
            except Exception as exc:  # noqa: BLE001 - name the step that failed, keep the cause
                raise MigrationError(
                    f"migration {migration.version} ({migration.name}) failed: {exc}"
                ) from exc
        _record(command, db, migration)
        applied.append(migration.version)
        event(log, "migration_applied", version=migration.version, title=migration.name)
    _apply_retention(command, query, db, settings.retention_days)
    return applied


def _record(command: Any, db: str, migration: Migration) -> None:
    command(
        f"INSERT INTO {db}.schema_migrations (version, name, checksum) VALUES "
        "({version:UInt32}, {name:String}, {checksum:String})",
        parameters={
            "version": migration.version,
            "name": migration.name,
            "checksum": migration.checksum,
        },
    )


def _check_unchanged(command: Any, db: str, migration: Migration, sums: set[str]) -> None:
    known = sums - {""}
    if not known:  # applied before checksums were kept: record what it is now
        _record(command, db, migration)
    elif migration.checksum not in known:
        raise MigrationError(
            f"migration {migration.version} ({migration.name}) was applied to {db} with other "
            f"statements (checksum {sorted(known)[0]}, now {migration.checksum}): released "
            "migrations are frozen; put the change in a new migration"
        )


def _apply_retention(command: Any, query: Any, db: str, days: int) -> None:
    engines = dict(
        query(
            "SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
            parameters={"db": db},
        ).result_rows
    )
    for table, expr in TTL_TABLES.items():
        # Only when it changed: MODIFY TTL rewrites parts, which is costly on a big table.
        if table in engines and f"toIntervalDay({days})" not in engines[table]:
            command(f"ALTER TABLE {db}.{table} MODIFY TTL {expr} + INTERVAL {days} DAY")
            event(log, "ttl_changed", table=table, days=days)
