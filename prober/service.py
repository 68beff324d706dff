"""Running a loop as a service: its metrics on /metrics, until SIGTERM or Ctrl-C. Shared by
`pinwatch probe` and `pinwatch ct watch`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from pinwatch.logs import event


def serve(
    name: str,
    loop: Callable[[asyncio.Event], Awaitable[None]],
    registry: CollectorRegistry,
    host: str,
    port: int,
    log: logging.Logger,
    **started: Any,
) -> int:
    """Serve `registry` on host:port and run `loop(stop)` until a signal sets `stop`; 1 with
    a one-line reason when the port cannot be bound."""
    try:
        server, _ = start_http_server(port, host, registry=registry)
    except OSError as exc:
        print(f"pinwatch {name}: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    prefix = name.replace(" ", "_")
    event(log, f"{prefix}_started", metrics=f"http://{host}:{port}/metrics", **started)

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.add_signal_handler(sig, stop.set)
        await loop(stop)

    try:
        asyncio.run(main())
    finally:
        server.shutdown()
        event(log, f"{prefix}_stopped")
    return 0
