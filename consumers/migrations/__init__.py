"""The ClickHouse schema, as forward-only migrations applied by `pinwatch migrate`.

Each migration is a module of this package, `mNNNN_<what>.py`, holding its DDL written out
(`VERSION`, `NAME`, `STATEMENTS`). They are frozen: never computed from live constants and never
edited once released, because a database that applied migration N never sees a later edit of
it. `schema_migrations` records each applied migration with a checksum of its statements, and
`migrate` refuses to run when a released migration's text changed, naming it (the change belongs
in a new migration). The tables the consumer writes are described in consumers/schema.py, whose
column lists a test compares with what these migrations create. With a cluster name, the same
migrations are applied in cluster form (consumers/migrations/cluster.py), under a migration lock
so two migrators cannot interleave.

Every table that receives inserts has `non_replicated_deduplication_window`, and the consumer
inserts with `insert_deduplication_token` + `deduplicate_blocks_in_dependent_materialized_views`
so a retried insert is dropped by the raw table and by every view alike.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import pkgutil
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from consumers.migrations import cluster as cluster_form
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


@dataclass(frozen=True)
class Target:
    """Where migrations go: a database, on one node or ON CLUSTER `cluster`."""

    db: str
    ttl_days: int
    dedup_seconds: int
    cluster: str = ""

    @classmethod
    def of(cls, settings: Settings, cluster: str | None = None) -> Target:
        name = settings.clickhouse_cluster if cluster is None else cluster
        if name and not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise MigrationError(f"cluster name must be letters, digits, _ . -: {name!r}")
        return cls(
            _database(settings),
            settings.retention_days,
            int(settings.dedup_window_seconds),
            name,
        )

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER '{self.cluster}'" if self.cluster else ""

    def sql(self, template: str) -> str:
        return template.format(
            db=self.db,
            ttl_days=self.ttl_days,
            dedup_seconds=self.dedup_seconds,
            cluster=self.cluster,
        )

    def statements(self, migration: Migration) -> list[str]:
        """A migration's statements as this target runs them."""
        if not self.cluster:
            return [self.sql(s) for s in migration.statements]
        return [self.sql(c) for s in migration.statements for c in cluster_form.render(s)]

    def bookkeeping(self) -> list[str]:
        if self.cluster:
            return [
                f"CREATE DATABASE IF NOT EXISTS {self.db}{self.on_cluster}",
                self.sql(cluster_form.SCHEMA_MIGRATIONS),
            ]
        return [
            f"CREATE DATABASE IF NOT EXISTS {self.db}",
            f"CREATE TABLE IF NOT EXISTS {self.db}.schema_migrations "
            "(version UInt32, name String, applied_at DateTime('UTC') DEFAULT now(), "
            "checksum String DEFAULT '') ENGINE = MergeTree ORDER BY version",
            # Databases migrated before checksums were recorded.
            f"ALTER TABLE {self.db}.schema_migrations ADD COLUMN IF NOT EXISTS checksum String",
        ]


def plan(settings: Settings, cluster: str | None = None) -> list[str]:
    """Every statement a fresh database gets, in order (`pinwatch migrate --print`)."""
    target = Target.of(settings, cluster)
    out = target.bookkeeping()
    for migration in MIGRATIONS:
        out += target.statements(migration)
    return out


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
    cluster: str | None = None,
) -> list[int]:
    """Apply every migration not yet recorded (up to version `to`, default all); returns the
    versions applied now. `cluster` overrides `settings.clickhouse_cluster`.

    `client` is a clickhouse-connect client (sync); `consumers.store.Store.migrate` calls this
    off the event loop. Statements are `IF NOT EXISTS`, so a migration interrupted halfway is
    simply re-run; the lock keeps a second migrator out meanwhile.
    """
    target = Target.of(settings, cluster)
    command = client.command
    command(target.bookkeeping()[0])  # the database: where the lock lives
    with _Lock(client, target, settings.migrate_lock_timeout_seconds):
        for statement in target.bookkeeping()[1:]:
            command(statement)
        recorded: dict[int, set[str]] = {}
        for version, checksum in client.query(
            f"SELECT version, checksum FROM {target.db}.schema_migrations"
        ).result_rows:
            recorded.setdefault(int(version), set()).add(str(checksum))
        applied: list[int] = []
        for migration in migrations:
            if to is not None and migration.version > to:
                break
            sums = recorded.get(migration.version)
            if sums is not None:
                _check_unchanged(command, target.db, migration, sums)
                continue
            for statement in target.statements(migration):
                try:
                    command(statement)
                except Exception as exc:  # noqa: BLE001 - name the step that failed, keep the cause
                    raise MigrationError(
                        f"migration {migration.version} ({migration.name}) failed: {exc}"
                    ) from exc
            _record(command, target.db, migration)
            applied.append(migration.version)
            event(log, "migration_applied", version=migration.version, title=migration.name)
        _apply_retention(client, target)
    return applied


LOCK_TABLE = "schema_migration_lock"


class _Lock:
    """Creating a table is atomic (a second CREATE fails, ON CLUSTER too): the lock is a table
    whose comment names the holder. Waits, polling, up to `timeout` seconds, then names the
    holder; a migrator that died holding it is released with `pinwatch migrate --unlock`."""

    def __init__(self, client: Any, target: Target, timeout: float) -> None:
        self.client = client
        self.target = target
        self.timeout = timeout

    def __enter__(self) -> _Lock:
        t = self.target
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        holder = f"{socket.gethostname()} pid {os.getpid()} since {since}"
        deadline = time.monotonic() + self.timeout
        last_said = 0.0
        while True:
            try:
                self.client.command(
                    f"CREATE TABLE {t.db}.{LOCK_TABLE}{t.on_cluster} (held UInt8) "
                    f"ENGINE = Memory COMMENT '{holder}'"
                )
                return self
            except Exception as exc:  # noqa: BLE001 - only "already exists" means held
                if "already exists" not in str(exc).lower():
                    raise
            held_by = lock_holder(self.client, t.db) or "another migrator"
            if time.monotonic() >= deadline:
                raise MigrationError(
                    f"{held_by} holds the migration lock of {t.db} ({t.db}.{LOCK_TABLE}); "
                    f"waited {self.timeout:g}s. If that migrator died, run `pinwatch migrate "
                    "--unlock`"
                )
            if time.monotonic() - last_said >= 5:
                event(log, "migration_lock_wait", database=t.db, held_by=held_by)
                last_said = time.monotonic()
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        unlock(self.client, self.target)


def lock_holder(client: Any, db: str) -> str | None:
    rows = client.query(
        "SELECT comment FROM system.tables WHERE database = {db:String} AND name = {name:String}",
        parameters={"db": db, "name": LOCK_TABLE},
    ).result_rows
    return str(rows[0][0]) if rows else None


def unlock(client: Any, target: Target) -> None:
    client.command(f"DROP TABLE IF EXISTS {target.db}.{LOCK_TABLE}{target.on_cluster} SYNC")


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


def _apply_retention(client: Any, target: Target) -> None:
    engines = dict(
        client.query(
            "SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
            parameters={"db": target.db},
        ).result_rows
    )
    days = target.ttl_days
    for table, expr in TTL_TABLES.items():
        name = cluster_form.local(table) if target.cluster else table
        # Only when it changed: MODIFY TTL rewrites parts, which is costly on a big table.
        if name in engines and f"toIntervalDay({days})" not in engines[name]:
            client.command(
                f"ALTER TABLE {target.db}.{name}{target.on_cluster} "
                f"MODIFY TTL {expr} + INTERVAL {days} DAY"
            )
            event(log, "ttl_changed", table=name, days=days)
