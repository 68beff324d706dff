"""`pinwatch consume`: migrate, then the consumer and its API until SIGINT/SIGTERM.

(`pinwatch migrate` alone is consumers/cmd_migrate.py.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from pinwatch import gctune
from pinwatch.logs import event
from pinwatch.settings import Settings

log = logging.getLogger("pinwatch.consumer")

HELP = "consume reports from Kafka into ClickHouse and serve /metrics (runs migrate first)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="API listen address (default: setting)")
    parser.add_argument("--port", type=int, default=None, help="API listen port (default: setting)")


async def serve(settings: Settings, host: str, port: int) -> int:
    import uvicorn

    from consumers.api import create_api
    from consumers.consumer import Consumer
    from consumers.policy.owner import PolicyOwner
    from consumers.steps import DeadLetterLimitExceeded
    from consumers.store import Store

    store = Store.from_settings(settings)
    applied = await store.migrate(settings)
    event(log, "migrated", applied=applied, database=settings.clickhouse_database)
    consumer = Consumer(settings, store)
    # The live policy is recorded against this process's policy file before anything asks.
    owner = PolicyOwner(store, consumer.policy)
    await owner.start()
    await consumer.start()
    gctune.for_batches()
    collector = asyncio.create_task(gctune.collect_periodically())
    api = create_api(settings, store, consumer=consumer, policy_owner=owner)
    server = uvicorn.Server(
        uvicorn.Config(api, host=host, port=port, log_config=None, access_log=False, lifespan="off")
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, consumer.stop)
    api_task = asyncio.create_task(server.serve())
    event(log, "consumer_api_listening", url=f"http://{host}:{port}")
    code = 0
    try:
        await consumer.run()
    except DeadLetterLimitExceeded as exc:
        print(f"pinwatch consume: stopped: {exc}", file=sys.stderr)
        code = 3
    finally:
        collector.cancel()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await api_task
        await store.close()
    return code


def run(args: argparse.Namespace, settings: Settings) -> int:
    from aiokafka.errors import KafkaError

    from consumers.migrations import MigrationError
    from consumers.store import StoreError
    from pinwatch.kafka import KafkaStartError
    from pinwatch.policy import PolicyError
    from pinwatch.roots import RootsError
    from pinwatch.topics import TopicsError

    host = args.host or settings.consumer_host
    port = args.port or settings.consumer_port
    try:
        return asyncio.run(serve(settings, host, port))
    except (MigrationError, StoreError) as exc:
        print(f"pinwatch consume: ClickHouse ({settings.clickhouse_shown}): {exc}", file=sys.stderr)
    except (KafkaStartError, TopicsError) as exc:  # their message names the setting to check
        print(f"pinwatch consume: {exc}", file=sys.stderr)
    except KafkaError as exc:
        print(
            f"pinwatch consume: Kafka at {settings.kafka_bootstrap}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
    except (PolicyError, RootsError) as exc:
        print(f"pinwatch consume: {exc}", file=sys.stderr)
    return 1
