"""The ingest HTTP service, built by a factory (tests build several in one process)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ingest.metrics import IngestMetrics
from ingest.ops import ops_router
from ingest.policy import PolicyFeed, policy_router
from ingest.producer import KafkaSink
from ingest.reports import ReportPath, report_endpoints, report_router, request_schemas
from pinwatch.errors import install_error_handlers
from pinwatch.kafka import KafkaStartError
from pinwatch.logs import event
from pinwatch.policy import Policy, load_policy
from pinwatch.settings import Settings
from pinwatch.topics import TopicsError, ensure_topics

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
    feed = PolicyFeed(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await ensure_topics(settings)
            if not sink.started:
                await sink.start()
        except (KafkaStartError, TopicsError) as exc:
            # uvicorn only logs a failed startup: `pinwatch ingest` prints this reason.
            app.state.startup_error = str(exc)
            event(log, "ingest_start_failed", logging.ERROR, reason=str(exc))
            raise
        polling = asyncio.create_task(feed.run())  # the live policy, from its owner
        event(log, "ingest_started", topic=settings.kafka_topic, apps=len(policy.app_ids))
        try:
            yield
        finally:
            polling.cancel()
            await asyncio.gather(polling, return_exceptions=True)
            if owns_sink:
                await sink.stop()
            event(log, "ingest_stopped")

    app = FastAPI(
        title="pinwatch ingest",
        summary="Receives TLS pin-validation reports and puts them on Kafka.",
        version="1",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.state.settings = settings
    app.state.startup_error = None
    app.state.policy = policy
    app.state.sink = sink
    app.state.metrics = metrics
    app.state.policy_feed = feed
    # One endpoint per report route: `pinwatch ingest`'s protocol answers most report POSTs
    # with it straight from the parser (ingest/protocol.py), the route below answers the rest
    # (chunked or large bodies, Expect: 100-continue, HTTP/1.0) and documents them all.
    app.state.report_endpoints = report_endpoints(ReportPath(settings, policy, sink, metrics))
    app.include_router(report_router(app.state.report_endpoints, settings))
    app.include_router(ops_router(settings, sink, metrics))
    app.include_router(policy_router(feed, settings))

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
