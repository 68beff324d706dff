"""`pinwatch ingest`: serve the report endpoints (uvicorn) until interrupted.

The policy is loaded first: a bad one prints every problem with its line and exits 2 before
anything starts. Topics are ensured, then uvicorn serves; on SIGINT/SIGTERM uvicorn stops
accepting, the app flushes the producer (waiting, bounded, for acknowledgements) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from pinwatch import gctune
from pinwatch.logs import event
from pinwatch.policy import PolicyError, load_policy
from pinwatch.settings import Settings

HELP = "receive pin-validation reports over HTTP and put them on Kafka"

log = logging.getLogger("pinwatch.ingest")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="listen address (default: settings)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default: settings)")


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's proxy-header options: off unless proxies are named. The client address becomes
    `client_network`, which tells interception on one network apart from a rotation, so which
    proxies may rewrite it is a deployment fact to state, not uvicorn's default (127.0.0.1);
    and uvicorn's proxy middleware costs a few microseconds a request even when no proxy
    header is sent (benchmarks/bench_ingest.py)."""
    trusted = settings.ingest_forwarded_allow_ips.strip()
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


def server_options(settings: Settings, app: Any) -> dict[str, Any]:
    """uvicorn's options for serving the ingest `app`: the proxy options (for requests that go
    uvicorn's way), no websockets (ingest serves none), and the HTTP protocol that answers
    report POSTs without ASGI, reads X-Forwarded-For from the same proxies itself and bounds
    how long a request may take to arrive (ingest/protocol.py)."""
    from ingest.protocol import report_protocol

    options = proxy_options(settings)
    options["ws"] = "none"
    options["http"] = report_protocol(
        app.state.report_endpoints,
        forwarded_allow_ips=settings.ingest_forwarded_allow_ips,
        read_timeout=settings.ingest_read_timeout_seconds,
    )
    return options


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        policy = load_policy(settings.policy_file)
    except PolicyError as exc:
        print(f"pinwatch ingest: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from ingest.app import create_app

    host = args.host or settings.ingest_host
    port = args.port or settings.ingest_port
    server: uvicorn.Server | None = None
    app: Any = None

    async def serve() -> None:
        nonlocal server, app
        # create_app makes the aiokafka producer, which must be created in the running loop.
        app = create_app(settings, policy=policy)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # keep pinwatch's structured logging
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(settings.kafka_produce_timeout_seconds) + 1,
            **server_options(settings, app),
        )
        server = uvicorn.Server(config)
        await server.serve()

    event(log, "ingest_listening", url=f"http://{host}:{port}", policy=str(settings.policy_file))
    gctune.for_requests()
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except SystemExit:
        if server is not None and server.started:
            raise
        # uvicorn exits (3) when the startup failed: say why below, with pinwatch's exit code
    # uvicorn reports a failed startup (e.g. Kafka unreachable) by not having started
    if server is not None and server.started:
        return 0
    if app is not None and app.state.startup_error:
        print(f"pinwatch ingest: {app.state.startup_error}", file=sys.stderr)
    return 1
