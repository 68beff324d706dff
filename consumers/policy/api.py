"""The live policy's admin API on the consumer (admin bearer token), under /v1/admin/policy:

- `GET /state`: the live state and every app's document claims; what the edge polls (ETag, so
  an unchanged state is a 304).
- `GET /status`: per host the phase, percentage and kills served (`pinwatch policy status`).
- `POST /changes`: one lever (`set_phase`, `kill`, `unkill`), applied and audited at once.
- `GET /history`: the audit log, newest first (`pinwatch policy history`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from consumers.auth import require_admin
from consumers.policy.audit import ConcurrentChange
from consumers.policy.owner import PolicyOwner
from consumers.store import StoreError
from pinwatch.errors import HTTPError, error_responses
from pinwatch.livepolicy import MAX_ACTOR, MAX_REASON, Change, ChangeError

router = APIRouter(
    prefix="/v1/admin/policy", tags=["policy"], dependencies=[Depends(require_admin)]
)
JSON = "application/json"


class ChangeBody(BaseModel):
    """One lever. `set_phase`: host, phase, percent (enforce only; default 100). `kill` and
    `unkill`: app, and host for one host only."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["set_phase", "kill", "unkill"]
    actor: str = Field(min_length=1, max_length=MAX_ACTOR, description="Who pulls the lever.")
    reason: str = Field("", max_length=MAX_REASON, description="Why; required for a kill.")
    app: str = Field("", max_length=256)
    host: str = Field("", max_length=256)
    phase: str = Field("", max_length=32)
    percent: float | None = None


def _owner(request: Request) -> PolicyOwner:
    return request.app.state.policy_owner


def _unavailable(exc: Exception) -> HTTPError:
    return HTTPError(503, f"ClickHouse failed; nothing changed: {exc}", error="unavailable")


@router.get("/state", responses=error_responses(401, 403, 503))
async def state(request: Request) -> Response:
    try:
        snapshot = await _owner(request).snapshot()
    except StoreError as exc:
        raise _unavailable(exc) from None
    headers = {"ETag": snapshot.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == snapshot.etag:
        return Response(status_code=304, headers=headers)
    return Response(orjson.dumps(snapshot.to_dict()), media_type=JSON, headers=headers)


@router.get("/status", responses=error_responses(401, 403, 503))
async def status(request: Request) -> Response:
    owner = _owner(request)
    try:
        live = await owner.state()
    except StoreError as exc:
        raise _unavailable(exc) from None
    return Response(orjson.dumps(owner.status(live)), media_type=JSON)


@router.post("/changes", responses=error_responses(400, 401, 403, 404, 409, 503))
async def change(request: Request, body: ChangeBody) -> Response:
    origin = request.client.host if request.client else ""
    try:
        record = await _owner(request).change(Change(**body.model_dump()), origin)
    except ChangeError as exc:
        raise HTTPError(exc.status, str(exc), field=exc.field) from None
    except ConcurrentChange as exc:
        raise HTTPError(409, str(exc), error="conflict") from None
    except StoreError as exc:
        raise _unavailable(exc) from None
    return Response(orjson.dumps(asdict(record)), media_type=JSON)


@router.get("/history", responses=error_responses(400, 401, 403, 503))
async def history(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    app: Annotated[str | None, Query(max_length=256)] = None,
    host: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    try:
        records = await _owner(request).history(limit=limit, app=app, host=host)
    except StoreError as exc:
        raise _unavailable(exc) from None
    return Response(orjson.dumps([asdict(r) for r in records]), media_type=JSON)
