"""`pinwatch migrate`: create or upgrade the ClickHouse schema (consumers/migrations/), or, with
`--check`, only tell whether it is current (and `--wait` until it is): what a consumer's
Kubernetes initContainer runs while the migration Job upgrades the schema."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from pinwatch.logs import event
from pinwatch.settings import Settings

HELP = "create or upgrade the ClickHouse schema (idempotent; records applied migrations)"

log = logging.getLogger("pinwatch.migrate")

# Exit status of `--check` when migrations are pending (1 stays "could not tell").
PENDING = 3
CHECK_INTERVAL_SECONDS = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The DSN, database, cluster and retention come from the settings."""
    parser.add_argument(
        "--cluster",
        metavar="NAME",
        default=None,
        help="apply the cluster form (ON CLUSTER NAME, Replicated and Distributed tables); "
        "default: $PINWATCH_CLICKHOUSE_CLUSTER, empty for a single node",
    )
    parser.add_argument(
        "--print",
        action="store_true",
        help="print the statements a fresh database gets (in cluster form with --cluster) and "
        "change nothing",
    )
    parser.add_argument(
        "--unlock",
        action="store_true",
        help="release the migration lock a migrator that died left behind, then stop",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"change nothing: exit 0 when every migration is applied, {PENDING} when some are "
        "pending, 1 when ClickHouse cannot be asked",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --check: ask again every few seconds until the schema is current, at most "
        "SECONDS (ClickHouse unreachable counts as not yet)",
    )


async def _check(settings: Settings, wait: float) -> tuple[int, str]:
    from consumers.store import Store, StoreError

    deadline = time.monotonic() + wait
    store = Store.from_settings(settings)
    try:
        while True:
            try:
                missing = await store.pending_migrations(settings)
                problem = f"migrations {missing} pending" if missing else ""
                code = PENDING if missing else 0
            except StoreError as exc:
                problem, code = str(exc), 1
            if not problem:
                return 0, "schema up to date"
            if time.monotonic() >= deadline:
                return code, problem
            # The initContainer's progress, once per poll: what it waits for, and how long left.
            event(
                log,
                "migrate_waiting",
                problem=problem,
                seconds_left=round(deadline - time.monotonic()),
            )
            await asyncio.sleep(min(CHECK_INTERVAL_SECONDS, max(deadline - time.monotonic(), 0)))
    finally:
        await store.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.migrations import MigrationError, Target, plan, unlock
    from consumers.store import Store, StoreError

    if args.cluster is not None:
        settings = settings.model_copy(update={"clickhouse_cluster": args.cluster})
    where = f"{settings.clickhouse_shown} (database {settings.clickhouse_database})"
    if args.print:
        try:
            print("".join(f"{statement};\n\n" for statement in plan(settings)), end="")
        except MigrationError as exc:
            print(f"pinwatch migrate: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.unlock:
        store = Store.from_settings(settings)
        try:
            asyncio.run(store.run(lambda: unlock(store._get_client(), Target.of(settings))))
        except (MigrationError, StoreError) as exc:
            print(f"pinwatch migrate: {exc}", file=sys.stderr)
            return 1
        print(f"migration lock released in {where}")
        return 0
    if args.wait and not args.check:
        print("pinwatch migrate: --wait goes with --check", file=sys.stderr)
        return 2
    if args.check:
        try:
            code, message = asyncio.run(_check(settings, max(args.wait, 0.0)))
        except (MigrationError, StoreError) as exc:
            code, message = 1, str(exc)
        print(
            f"{message} in {where}" if code == 0 else f"pinwatch migrate: {message}",
            file=sys.stdout if code == 0 else sys.stderr,
        )
        return code

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
    print(
        f"applied migrations {applied} to {where}" if applied else f"schema up to date in {where}"
    )
    return 0
