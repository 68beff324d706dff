"""`pinwatch topics`: show the reports and dead-letter topics as the cluster has them, or raise
their partitions (`--partitions N`)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from pinwatch.kafka import KafkaStartError
from pinwatch.settings import Settings
from pinwatch.topics import TopicLayout, TopicsError, layouts, raise_partitions

HELP = "show the Kafka topics' partitions, replication and min ISR, or raise the partitions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Without --partitions: show the reports and dead-letter topics (partitions, replication, "
        "min.insync.replicas, retention, under-replicated partitions). With --partitions N: give "
        "both topics N partitions; Kafka cannot take partitions away, so an N below a topic's "
        "count is refused and nothing changes. Consumers beyond the partitions stay idle: raise "
        "the partitions before adding consumer replicas."
    )
    parser.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="raise both topics to N partitions (never lowers)",
    )


def describe(topic: TopicLayout, settings: Settings) -> str:
    if not topic.exists:
        return (
            f"{topic.name}: not created yet (ingest or the consumer creates it at start with "
            f"{settings.kafka_partitions} partitions, replication "
            f"{settings.kafka_replication_factor}, min.insync.replicas "
            f"{settings.kafka_min_insync_replicas})"
        )
    retention = f"{topic.retention_ms / 3_600_000:g} h" if topic.retention_ms else "?"
    line = (
        f"{topic.name}: {topic.partitions} partitions, replication {topic.replication}, "
        f"min.insync.replicas {topic.min_insync_replicas}, retention {retention}"
    )
    if topic.under_replicated:
        line += f"; {topic.under_replicated} partitions under-replicated (a broker is down?)"
    if topic.min_insync_replicas != settings.kafka_min_insync_replicas:
        line += (
            f"; PINWATCH_KAFKA_MIN_INSYNC_REPLICAS says {settings.kafka_min_insync_replicas} "
            "(applied to topics pinwatch creates; change this one with kafka-configs.sh)"
        )
    return line


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.partitions is None:
            for topic in asyncio.run(layouts(settings)):
                print(describe(topic, settings))
            return 0
        if args.partitions < 1:
            print("pinwatch topics: --partitions must be at least 1", file=sys.stderr)
            return 2
        changes = asyncio.run(raise_partitions(settings, args.partitions))
    except (KafkaStartError, TopicsError) as exc:
        print(f"pinwatch topics: {exc}", file=sys.stderr)
        return 1
    for name, before, after in changes:
        print(f"{name}: " + (f"{before} -> {after}" if before != after else f"already {after}"))
    if any(before != after for _, before, after in changes):
        print(
            "ingest writes to the new partitions and the consumer group takes them within "
            "kafka_metadata_max_age_seconds (30 s by default; ingest checks every few "
            "seconds); a device's reports "
            "may move to another partition once (report ids keep the counts exact)."
        )
    return 0
