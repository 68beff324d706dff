"""`pinwatch kafka`: the local single-node broker (the same code tests and the demo use)."""

from __future__ import annotations

import argparse
import sys

from devstack.localkafka import KafkaError, LocalKafka, fetch
from pinwatch.settings import Settings

HELP = "fetch, start or stop the local single-node Kafka broker (KRaft, loopback)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["fetch", "start", "stop", "run"],
        help="fetch the jars once; start in the background; stop; run in the foreground",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    broker = LocalKafka.from_settings(settings)
    try:
        if args.action == "fetch":
            print(fetch(settings))
        elif args.action == "start":
            broker.start()
            print(f"Kafka ready at {broker.bootstrap} (log: {broker.log_path})")
        elif args.action == "stop":
            broker.stop()
        else:
            broker.start()
            print(f"Kafka running at {broker.bootstrap}; Ctrl-C stops it")
            try:
                assert broker.process is not None
                broker.process.wait()
            finally:
                broker.stop()
    except KafkaError as exc:
        print(f"pinwatch kafka: {exc}", file=sys.stderr)
        return 1
    return 0
