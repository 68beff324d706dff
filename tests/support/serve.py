"""Serving HTTP in tests: an ASGI app with real uvicorn on a free loopback port, in the running
event loop (ingest tests and the in-process pipeline), and waiting for a `pinwatch` child
process to answer /readyz."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn

from devstack.localkafka import free_port
from pinwatch.settings import Settings


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
    app: Any,
    *,
    lifespan: Literal["on", "off"] = "on",
    startup_seconds: float = 30.0,
    options: dict[str, Any] | None = None,
) -> Served:
    """Start serving `app`; returns once uvicorn listens (or raises its startup failure).
    `options`: more of uvicorn's settings."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan=lifespan,
        log_config=None,
        access_log=False,
        **(options or {}),
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


async def start_ingest(settings: Settings) -> Served:
    """A fresh ingest app served as `pinwatch ingest` serves it (its report protocol included)."""
    from ingest.app import create_app
    from ingest.cli import server_options

    app = create_app(settings)
    return await start_server(app, options=server_options(settings, app))


@asynccontextmanager
async def serve(app: Any, startup_seconds: float = 30.0) -> AsyncIterator[str]:
    """Run `app` (lifespan on) for the block; yields its base URL."""
    served = await start_server(app, startup_seconds=startup_seconds)
    try:
        yield served.url
    finally:
        await served.stop(startup_seconds)


@asynccontextmanager
async def serve_ingest(settings: Settings, startup_seconds: float = 30.0) -> AsyncIterator[str]:
    """`start_ingest` for the block; yields its base URL."""
    served = await start_ingest(settings)
    try:
        yield served.url
    finally:
        await served.stop(startup_seconds)


async def wait_ready(
    url: str,
    *,
    running: Callable[[], bool],
    what: str,
    log: Path | None = None,
    seconds: float = 60,
) -> None:
    """Until GET `url`/readyz answers 200. Fails naming `what` (with the end of its `log`) when
    `running()` turns false or after `seconds`."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            if not running():
                raise AssertionError(f"{what} exited{_log_end(log)}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not ready after {seconds}s{_log_end(log)}")


def _log_end(log: Path | None) -> str:
    return f": {log.read_text()[-3000:]}" if log is not None else ""
