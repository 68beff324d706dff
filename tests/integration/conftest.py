"""Fixtures of the integration tier (real Kafka, chDB, Prometheus, Alertmanager)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pinwatch.settings import Settings
from tests.support.ingest import RunningIngest, ingest_apps


@pytest.fixture
async def ingest(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[RunningIngest]]]:
    """`await ingest(**settings_overrides)`: a real ingest app (uvicorn with pinwatch's report
    protocol, as `pinwatch ingest` serves it; the session's Kafka broker, this test's topics),
    with a client sending the test app's key and JSON by default. Every one started is stopped
    (producer flushed) at the end of the test."""
    async with ingest_apps(make_settings) as start:
        yield start
