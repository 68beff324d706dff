"""Waiting for a condition with a deadline, never with a fixed sleep: poll `check` until it
returns something truthy or `timeout` seconds pass, and return its last value (so the caller's
assertion shows what it saw)."""

from __future__ import annotations

import asyncio
import inspect
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


async def eventually(
    check: Callable[[], Any | Awaitable[Any]],
    timeout: float = 30.0,  # noqa: ASYNC109 - a deadline on a poll, as wait_until's
    every: float = 0.1,
) -> Any:
    """`wait_until` for the event loop: `check` may be a coroutine function; the loop keeps
    serving what the test runs meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every)
