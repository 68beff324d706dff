"""Operational routes: liveness, readiness (Kafka reachable, producer healthy) and /metrics."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingest.metrics import IngestMetrics
from ingest.producer import KafkaSink
from pinwatch.errors import ErrorBody
from pinwatch.settings import Settings


def ops_router(settings: Settings, sink: KafkaSink, metrics: IngestMetrics) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="The process is alive", responses={200: {"description": "ok"}})
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @router.get(
        "/readyz",
        summary="Kafka reachable and the producer healthy",
        responses={
            200: {"description": "ready to accept reports"},
            503: {"model": ErrorBody, "description": "not ready; `detail` says why"},
        },
    )
    async def readyz() -> Response:
        ok, why = sink.ready()
        if ok:
            return Response(b'{"status":"ready"}', media_type="application/json")
        body = {"error": "not_ready", "field": None, "detail": why}
        headers = {"Retry-After": str(settings.ingest_retry_after_seconds)}
        return Response(orjson.dumps(body), 503, headers=headers, media_type="application/json")

    @router.get(
        "/metrics",
        summary="Prometheus metrics of this ingest process",
        responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
    )
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
