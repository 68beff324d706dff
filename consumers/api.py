"""The consumer's HTTP face: /metrics, /healthz, /readyz, the rollout query API and the live
policy's admin API.

Built by a factory so tests can run several in one process. `app.state` carries `settings`,
`store`, `policy`, `consumer` and `policy_owner` for the routers: in embedded mode only this
process may open ClickHouse, so every read goes through its Store.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumers.metrics import ConsumerMetrics
from consumers.policy.api import router as policy_router
from consumers.policy.owner import PolicyOwner
from consumers.store import Store
from pinwatch.errors import error_response, error_responses, install_error_handlers
from pinwatch.policy import Policy, load_policy
from pinwatch.settings import Settings


def create_api(
    settings: Settings,
    store: Store,
    *,
    metrics: ConsumerMetrics | None = None,
    consumer: Any = None,
    policy: Policy | None = None,
    policy_owner: PolicyOwner | None = None,
) -> FastAPI:
    """`consumer` (a consumers.consumer.Consumer) makes /readyz meaningful and provides the
    metrics; without one the API serves queries only (readiness = ClickHouse answers).
    `policy_owner` serves the live policy's admin API (one on this store and policy by
    default, recording its policy file on first use)."""
    if metrics is None:
        metrics = consumer.metrics if consumer is not None else ConsumerMetrics()
    app = FastAPI(title="pinwatch consumer", docs_url=None, redoc_url=None)
    install_error_handlers(app)  # every answer but a 2xx is {"error", "field", "detail"}
    app.state.settings = settings
    app.state.store = store
    app.state.policy = policy or (consumer.policy if consumer is not None else None)
    if app.state.policy is None:
        app.state.policy = load_policy(settings.policy_file)
    app.state.consumer = consumer
    app.state.metrics = metrics
    app.state.policy_owner = policy_owner or PolicyOwner(store, app.state.policy)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. Everything else is readiness."""
        return {"status": "ok"}

    @app.get("/readyz", responses=error_responses(503))
    async def readyz() -> Response:
        problems = []
        if consumer is not None:
            if consumer.fatal:
                problems.append(f"consumer stopped: {consumer.fatal}")
            elif not consumer.started:
                problems.append("consumer not running")
            elif not consumer.ready:
                problems.append("ClickHouse inserts failing; consumption paused")
        if not problems and not await store.ping():
            problems.append("ClickHouse does not answer")
        if problems:
            return error_response(503, "not_ready", "; ".join(problems))
        return JSONResponse({"status": "ready"})

    try:
        from consumers.rollout.api import router as rollout_router
    except ImportError:  # the rollout query API is optional for the consumer to run
        rollout_router = None
    if rollout_router is not None:
        app.include_router(rollout_router)
    app.include_router(policy_router)
    return app
