"""The audit table's reads and writes. The newest row (highest version; of rows racing for one
version, the first ClickHouse recorded) is the live state."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from consumers.store import Store
from pinwatch.livepolicy import Applied, LiveState

AUDIT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("version", "UInt64"),
    ("change_id", "String"),
    ("changed_at", "DateTime64(3, 'UTC')"),
    ("actor", "String"),
    ("origin", "String"),
    ("action", "LowCardinality(String)"),
    ("app", "String"),
    ("host", "String"),
    ("reason", "String"),
    ("what", "String"),
    ("state", "String"),
    ("recorded_at", "DateTime64(6, 'UTC')"),  # ClickHouse's clock (DEFAULT now64): not sent
)
_NAMES = tuple(name for name, _ in AUDIT_COLUMNS[:-1])
_TYPES = tuple(kind for _, kind in AUDIT_COLUMNS[:-1])
# One row per version: of rows racing for a version, the one ClickHouse recorded first counts,
# so a writer that found only its own row has won for good.
_FIRST = "recorded_at ASC, change_id ASC"
_ONE_PER_VERSION = f"ORDER BY version DESC, {_FIRST} LIMIT 1 BY version"


class ConcurrentChange(RuntimeError):
    """Another owner recorded the same version first; the change did not take effect."""


@dataclass(frozen=True)
class AuditRecord:
    version: int
    change_id: str
    changed_at: str
    actor: str
    origin: str
    action: str
    app: str
    host: str
    reason: str
    what: dict[str, Any]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AuditRecord:
        at = row["changed_at"]
        if isinstance(at, dt.datetime):
            at = at.replace(tzinfo=at.tzinfo or dt.UTC).astimezone(dt.UTC)
            at = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return cls(
            version=int(row["version"]),
            change_id=str(row["change_id"]),
            changed_at=str(at),
            actor=str(row["actor"]),
            origin=str(row["origin"]),
            action=str(row["action"]),
            app=str(row["app"]),
            host=str(row["host"]),
            reason=str(row["reason"]),
            what=orjson.loads(row["what"] or "{}"),
        )


async def latest_state(store: Store) -> LiveState:
    rows = await store.query(f"SELECT state FROM {{db}}.policy_audit {_ONE_PER_VERSION} LIMIT 1")
    return LiveState.from_json(rows[0][0]) if rows else LiveState()


async def record(store: Store, applied: Applied, origin: str = "") -> AuditRecord:
    """Write the change as one row (the state and its audit record at once); raises
    `ConcurrentChange` when another owner won this version."""
    state = applied.state
    record = AuditRecord(
        state.version,
        str(uuid.uuid4()),
        state.changed_at,
        applied.actor,
        origin,
        applied.action,
        applied.app,
        applied.host,
        applied.reason,
        applied.what,
    )
    columns = asdict(record)
    columns["changed_at"] = dt.datetime.fromisoformat(state.changed_at.replace("Z", "+00:00"))
    columns["what"] = orjson.dumps(applied.what, option=orjson.OPT_SORT_KEYS).decode()
    columns["state"] = state.to_json()
    # The token makes a retried insert of this very row a no-op.
    await store.insert(
        "policy_audit",
        [[columns[name] for name in _NAMES]],
        _NAMES,
        column_types=_TYPES,
        settings={"insert_deduplication_token": record.change_id},
    )
    winner = await store.scalar(
        f"SELECT change_id FROM {{db}}.policy_audit WHERE version = {{v:UInt64}} "
        f"ORDER BY {_FIRST} LIMIT 1",
        {"v": state.version},
    )
    if winner != record.change_id:
        raise ConcurrentChange(
            f"another change was recorded as version {state.version} at the same time; "
            "look at `pinwatch policy status` and retry"
        )
    return record


async def history(
    store: Store, *, limit: int, app: str | None = None, host: str | None = None
) -> list[AuditRecord]:
    """Newest first; `app` and `host` keep the changes that reach them: a host's phase reaches
    every app, an app-wide kill every host, a new policy file everything."""
    conds, params = [], {}
    if app:
        conds.append("app IN ({app:String}, '')")
        params["app"] = app
    if host:
        conds.append("host IN ({host:String}, '')")
        params["host"] = host
    where = "".join(f" AND {c}" for c in conds)
    rows = await store.query_dicts(
        f"SELECT {', '.join(_NAMES[:-1])} FROM {{db}}.policy_audit "
        f"WHERE (version, change_id) IN (SELECT version, change_id FROM {{db}}.policy_audit "
        f"{_ONE_PER_VERSION}){where} "
        f"ORDER BY version DESC LIMIT {int(limit)}",
        params,
    )
    return [AuditRecord.from_row(r) for r in rows]
