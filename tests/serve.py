"""Serve an ASGI app with real uvicorn on a free loopback port, in the running event loop
(ingest tests and the in-process pipeline)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn

from pinwatch.localkafka import free_port


@dataclass
class Served:
    """An app uvicorn is serving; `stop` shuts it down (lifespan shutdown included)."""

    server: uvicorn.Server
    task: asyncio.Task[Any]
    url: str

    async def stop(self, seconds: float) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, seconds)


async def start_server(
    app: Any, *, lifespan: Literal["on", "off"] = "on", startup_seconds: float = 30.0
) -> Served:
    """Start serving `app`; returns once uvicorn listens (or raises its startup failure)."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan=lifespan, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + startup_seconds
    while not server.started:
        if task.done():
            task.result()  # raises the startup error
            raise RuntimeError("uvicorn exited during startup")
        if time.monotonic() > deadline:
            raise TimeoutError(f"uvicorn did not start in {startup_seconds}s")
        await asyncio.sleep(0.02)
    return Served(server, task, f"http://127.0.0.1:{port}")


@asynccontextmanager
async def serve(app: Any, startup_seconds: float = 30.0) -> AsyncIterator[str]:
    """Run `app` (lifespan on) for the block; yields its base URL."""
    served = await start_server(app, startup_seconds=startup_seconds)
    try:
        yield served.url
    finally:
        await served.stop(startup_seconds)
