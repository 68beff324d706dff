"""Waiting for a condition with a deadline, never with a fixed sleep: poll `check` until it
returns something truthy or `timeout` seconds pass, and return its last value (so the caller's
assertion shows what it saw)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


def wait_until(check: Callable[[], Any], timeout: float = 30.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


async def wait_until_async(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 30.0,  # noqa: ASYNC109 - a deadline for the condition, not a cancel
    every: float = 0.1,
) -> Any:
    """`wait_until` for a check that awaits (the event loop runs the code under test)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every)
