"""`GET /v1/rollout/{host}`: the rollout answer as JSON, for the admin token only.

Mounted by `consumers.api.create_api`, which puts `settings`, `store` and `policy` on
`app.state`: in embedded mode only the consumer process may open ClickHouse, so the query API
lives beside the consumer and reads through its Store.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from consumers.auth import require_admin
from consumers.rollout.analysis import analyze
from consumers.rollout.request import RolloutRequestError, build_request
from consumers.store import StoreError
from pinwatch.errors import HTTPError, error_responses

router = APIRouter(prefix="/v1/rollout", tags=["rollout"], dependencies=[Depends(require_admin)])


@router.get("/{host}", responses=error_responses(400, 401, 403, 404, 503))
async def rollout(
    request: Request,
    host: str,
    since: Annotated[
        str | None,
        Query(description="30m, 24h, 7d (at most retention_days) or an ISO 8601 time"),
    ] = None,
    app: Annotated[str | None, Query(max_length=256)] = None,
    app_version: Annotated[str | None, Query(max_length=256)] = None,
    platform: Annotated[str | None, Query(max_length=64)] = None,
    pin: Annotated[list[str] | None, Query(description="candidate pin, [role:]sha256")] = None,
    pin_set: Annotated[str | None, Query(description="a pin set of the host's policy")] = None,
) -> Response:
    state = request.app.state
    settings = state.settings
    if pin and len(pin) > settings.max_pins_per_report:
        raise HTTPError(
            400, f"pin: at most {settings.max_pins_per_report} candidate pins", field="pin"
        )
    try:
        req = build_request(
            state.policy,
            host,
            since=since or settings.rollout_default_since,
            pins=pin,
            pin_set=pin_set,
            app=app,
            app_version=app_version,
            platform=platform,
            max_days=settings.retention_days,
        )
    except RolloutRequestError as exc:
        raise HTTPError(exc.status, str(exc), field=exc.field) from None
    try:
        answer = await analyze(state.store, req, settings)
    except StoreError as exc:
        raise HTTPError(503, f"ClickHouse query failed: {exc}") from None
    return Response(orjson.dumps(answer.to_dict()), media_type="application/json")
