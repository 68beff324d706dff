"""The ingest HTTP service, built by a factory (tests build several in one process)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ingest.metrics import IngestMetrics
from ingest.ops import ops_router
from ingest.producer import KafkaSink
from ingest.reports import ReportPath, report_router, request_schemas, serving_routes
from pinwatch.logs import event
from pinwatch.policy import Policy, load_policy
from pinwatch.settings import Settings
from pinwatch.topics import ensure_topics

log = logging.getLogger("pinwatch.ingest")


def create_app(
    settings: Settings, policy: Policy | None = None, producer: KafkaSink | None = None
) -> FastAPI:
    """The ingest app. `policy` defaults to settings.policy_file (a bad one raises PolicyError
    here, before anything starts); `producer` defaults to a `KafkaSink` the app starts on
    startup and flushes and stops on shutdown (a given one is started if needed, not stopped)."""
    policy = policy or load_policy(settings.policy_file)
    owns_sink = producer is None
    sink = producer or KafkaSink(settings)
    metrics = IngestMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ensure_topics(settings)
        if not sink.started:
            await sink.start()
        event(log, "ingest_started", topic=settings.kafka_topic, apps=len(policy.app_ids))
        try:
            yield
        finally:
            if owns_sink:
                await sink.stop()
            event(log, "ingest_stopped")

    app = FastAPI(
        title="pinwatch ingest",
        summary="Receives TLS pin-validation reports and puts them on Kafka.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.policy = policy
    app.state.sink = sink
    app.state.metrics = metrics
    reports = ReportPath(settings, policy, sink, metrics)
    app.router.routes.extend(serving_routes(reports))  # first: they win the POSTs
    app.include_router(report_router(reports))  # documents them; answers CORS preflights
    app.include_router(ops_router(settings, sink, metrics))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                request_schemas(settings)
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
