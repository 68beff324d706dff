"""The one way into ClickHouse: clickhouse-connect behind a single-thread executor.

The DSN decides the engine: `chdb:///path` runs ClickHouse embedded in this process (chDB),
`http(s)://host:8123` talks to a server; the code above this class does not care which. chDB has
no async client and allows one data directory per process, so every blocking call runs on one
worker thread (shared by every Store on the same chDB path), off the event loop. In embedded mode
nothing else may open the data directory: the query API, the failing-devices gauge and tests all
read through the consumer process's Store.
"""

from __future__ import annotations

import asyncio
import importlib.util
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import clickhouse_connect

from pinwatch.settings import Settings

T = TypeVar("T")

_shared_lock = threading.Lock()
_shared_executors: dict[str, ThreadPoolExecutor] = {}


def _executor_for(url: str) -> tuple[ThreadPoolExecutor, bool]:
    """chDB: one worker thread per data directory for the whole process (the engine is
    process-wide). Servers: a worker of the Store's own. Returns (executor, owned)."""
    if not url.startswith("chdb:"):
        return ThreadPoolExecutor(1, thread_name_prefix="clickhouse"), True
    with _shared_lock:
        executor = _shared_executors.get(url)
        if executor is None:
            executor = ThreadPoolExecutor(1, thread_name_prefix="chdb")
            _shared_executors[url] = executor
        return executor, False


class StoreError(RuntimeError):
    """ClickHouse refused or could not be reached; the message says which call."""


CHDB_MISSING = (
    "{url}: a chdb:// DSN (also what an empty PINWATCH_CLICKHOUSE_DSN means) runs ClickHouse "
    "embedded, which needs chDB: install pinwatch with its `chdb` extra "
    "(pip install 'pinwatch[chdb]'), or set PINWATCH_CLICKHOUSE_DSN to a ClickHouse server "
    "(http(s)://user:password@host:8123)"
)


class Store:
    def __init__(self, url: str, database: str, cluster: str = "") -> None:
        # chDB is an optional extra (a server deployment leaves its 500 MB out): say so before
        # clickhouse-connect fails with an ImportError that names its own extra, not ours.
        if url.startswith("chdb:") and importlib.util.find_spec("chdb") is None:
            raise StoreError(CHDB_MISSING.format(url=url))
        self.url = url
        self.database = database
        # On a cluster, inserts go through Distributed tables: in the foreground, so an insert
        # returns only once every shard stored its rows (commit-after-insert holds) and the
        # dedup token reaches each shard's replicated table with the same rows on a retry.
        self.insert_settings: dict[str, Any] = {"insert_distributed_sync": 1} if cluster else {}
        self._executor, self._owns_executor = _executor_for(url)
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(
            settings.clickhouse_url, settings.clickhouse_database, settings.clickhouse_cluster
        )

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb:")

    # --- blocking side (runs on the worker thread) ----------------------------------------------

    def _get_client(self) -> Any:
        if self._client is None:
            # No `database=` here: the database may not exist before `migrate`; statements name
            # tables as `{db}.table` and `query`/`command` substitute the database.
            self._client = clickhouse_connect.get_client(dsn=self.url)
        return self._client

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one error type for callers, cause kept
            raise StoreError(f"{getattr(fn, '__name__', 'call')}: {exc}") from exc

    def _query(self, sql: str, parameters: dict[str, Any] | None) -> list[tuple[Any, ...]]:
        client = self._get_client()
        result = client.query(sql, parameters=parameters)
        return [tuple(row) for row in result.result_rows]

    def _query_values(
        self, sql: str, values: Sequence[str], parameters: dict[str, Any] | None
    ) -> list[tuple[Any, ...]]:
        # One hex string a line: exact whatever a value contains, and no escaping to do.
        data = "\n".join(v.encode().hex() for v in values).encode()
        client = self._get_client()
        if not self.embedded:
            from clickhouse_connect.driver.external import ExternalData

            external = ExternalData(data=data, file_name="probe", fmt="TSV", structure="h String")
            table = "(SELECT unhex(h) FROM probe)"
            result = client.query(
                sql.replace("{values}", table), parameters=parameters, external_data=external
            )
            return [tuple(row) for row in result.result_rows]
        # chDB takes no external data; it reads a file of this process as fast.
        with tempfile.NamedTemporaryFile(suffix=".tsv", prefix="pinwatch-probe-") as f:
            f.write(data)
            f.flush()
            path = f.name.replace("\\", "\\\\").replace("'", "\\'")
            table = f"(SELECT unhex(h) FROM file('{path}', 'TSV', 'h String'))"
            result = client.query(sql.replace("{values}", table), parameters=parameters)
            return [tuple(row) for row in result.result_rows]

    def _query_dicts(self, sql: str, parameters: dict[str, Any] | None) -> list[dict[str, Any]]:
        client = self._get_client()
        result = client.query(sql, parameters=parameters)
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def _command(self, sql: str, parameters: dict[str, Any] | None) -> Any:
        return self._get_client().command(sql, parameters=parameters)

    def _insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        settings: dict[str, Any] | None,
        column_oriented: bool,
        column_types: Sequence[str] | None,
    ) -> int:
        if not data:
            return 0
        summary = self._get_client().insert(
            f"{self.database}.{table}",
            data,
            column_names=list(column_names),
            settings={**self.insert_settings, **(settings or {})},
            column_oriented=column_oriented,
            # Known types spare clickhouse-connect a DESCRIBE TABLE round trip per insert.
            column_type_names=list(column_types) if column_types is not None else None,
        )
        return int(summary.written_rows or 0)

    def _insert_arrow(self, table: str, data: Any, settings: dict[str, Any] | None) -> int:
        if not data.num_rows:
            return 0
        summary = self._get_client().insert_arrow(
            f"{self.database}.{table}", data, settings={**self.insert_settings, **(settings or {})}
        )
        return int(summary.written_rows or 0)

    def _migrate(self, settings: Settings, to: int | None) -> list[int]:
        from consumers.migrations import migrate

        return migrate(self._get_client(), settings, to=to)

    def _pending(self, settings: Settings) -> list[int]:
        from consumers.migrations import pending

        return pending(self._get_client(), settings)

    # --- async side ------------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run any blocking function on the ClickHouse worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._call, fn, *args, **kwargs))

    async def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Rows as tuples. Write table names as `{db}.table`: `sql` is formatted with db=."""
        return await self.run(self._query, self._sql(sql), parameters)

    async def query_with_values(
        self, sql: str, values: Sequence[str], parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """`sql` with `{values}` standing for a subquery that yields `values` (one String
        column). For thousands of values: as a query parameter or literal they cost ~10 us each
        to escape and parse; this sends them as data (a file for chDB, external data for a
        server)."""
        return await self.run(self._query_values, self._sql(sql), values, parameters)

    async def query_dicts(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        return await self.run(self._query_dicts, self._sql(sql), parameters)

    async def scalar(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        rows = await self.query(sql, parameters)
        return rows[0][0] if rows else None

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return await self.run(self._command, self._sql(sql), parameters)

    async def insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        *,
        settings: dict[str, Any] | None = None,
        column_oriented: bool = False,
        column_types: Sequence[str] | None = None,
    ) -> int:
        return await self.run(
            self._insert, table, data, column_names, settings, column_oriented, column_types
        )

    async def insert_arrow(
        self, table: str, data: Any, *, settings: dict[str, Any] | None = None
    ) -> int:
        """Insert a pyarrow Table (its column names are the table's)."""
        return await self.run(self._insert_arrow, table, data, settings)

    async def migrate(self, settings: Settings, to: int | None = None) -> list[int]:
        """Apply the migrations not yet applied (up to version `to`); see consumers.migrations."""
        return await self.run(self._migrate, settings, to)

    async def pending_migrations(self, settings: Settings) -> list[int]:
        """Migration versions this code knows that the database has not applied yet."""
        return await self.run(self._pending, settings)

    async def ping(self) -> bool:
        try:
            await self.query("SELECT 1")
            return True
        except StoreError:
            return False

    def _sql(self, sql: str) -> str:
        return sql.replace("{db}", self.database)

    async def close(self) -> None:
        if self._owns_executor:
            self._executor.shutdown(wait=False)
        if self._client is not None and not self.embedded:
            client, self._client = self._client, None
            await asyncio.get_running_loop().run_in_executor(None, client.close)
