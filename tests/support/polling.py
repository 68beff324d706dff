"""Waiting for a condition with a deadline, never with a fixed sleep: poll `check` until it
returns something truthy or `timeout` seconds pass, and return its last value (so the caller's
assertion shows what it saw)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_until(check: Callable[[], Any], timeout: float = 30.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


async def wait_for(check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:  # noqa: ASYNC109
    """`wait_until` for async tests: `check` may return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every)
