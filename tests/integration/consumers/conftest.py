"""Fixtures of the consumer's integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from consumers.store import Store
from pinwatch.settings import Settings


@pytest.fixture
async def store(make_settings: Callable[..., Settings]) -> AsyncIterator[Store]:
    """A Store on this test's own ClickHouse database (`make_settings()`'s, not migrated yet);
    closed after the test."""
    store = Store.from_settings(make_settings())
    try:
        yield store
    finally:
        await store.close()
