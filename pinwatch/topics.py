"""pinwatch's two topics (reports and dead letters): created by pinwatch with explicit
partitions, replication, `min.insync.replicas` and retention, never auto-created; shown and
grown by `pinwatch topics` (pinwatch/cmd_topics.py).

Kafka can add partitions to a topic but never take them away, and an existing topic's
replication is not pinwatch's to change: `ensure_topics` leaves existing topics as they are, and
`raise_partitions` only ever raises.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from pinwatch.kafka import client_args, start_client
from pinwatch.logs import event
from pinwatch.settings import Settings

log = logging.getLogger("pinwatch.topics")

_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3
_SHOWN_CONFIGS = ("min.insync.replicas", "retention.ms")


class TopicsError(RuntimeError):
    """Kafka refused a topic change, or pinwatch refuses one: the message says why."""


@dataclass(frozen=True)
class TopicLayout:
    """One topic as the cluster has it; `partitions` is None when it does not exist."""

    name: str
    partitions: int | None = None
    replication: int | None = None
    min_insync_replicas: int | None = None
    retention_ms: int | None = None
    under_replicated: int = 0  # partitions with fewer in-sync copies than replicas

    @property
    def exists(self) -> bool:
        return self.partitions is not None


def topic_names(settings: Settings) -> list[str]:
    return [settings.kafka_topic, settings.kafka_dead_letter_topic]


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        **client_args(settings),
        request_timeout_ms=int(settings.kafka_connect_timeout_seconds * 1000),
        client_id="pinwatch-topics",
    )
    await start_client(admin, settings, "the topic admin client")
    try:
        yield admin
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, names: list[str] | None = None) -> None:
    """Create whichever of the topics is missing, as the settings say; existing ones are left
    as they are (`pinwatch topics` shows them)."""
    names = names or topic_names(settings)
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        configs = {
            "retention.ms": str(settings.kafka_retention_hours * 3600 * 1000),
            "compression.type": "producer",
            "min.insync.replicas": str(settings.kafka_min_insync_replicas),
        }
        topics = [
            NewTopic(
                name,
                settings.kafka_partitions,
                settings.kafka_replication_factor,
                topic_configs=configs,
            )
            for name in missing
        ]
        response = await admin.create_topics(topics)
        # aiokafka returns the broker's per-topic errors instead of raising them: a replication
        # above the brokers available would otherwise pass here and fail every produce later.
        for topic, code, *message in response.topic_errors:
            if code and code != _TOPIC_ALREADY_EXISTS:  # already there: another process won
                detail = message[0] if message and message[0] else for_code(code).__name__
                raise TopicsError(
                    f"Kafka refused to create topic {topic!r} with "
                    f"{settings.kafka_partitions} partitions, replication "
                    f"{settings.kafka_replication_factor} and min.insync.replicas "
                    f"{settings.kafka_min_insync_replicas} (PINWATCH_KAFKA_PARTITIONS, "
                    "PINWATCH_KAFKA_REPLICATION_FACTOR, PINWATCH_KAFKA_MIN_INSYNC_REPLICAS): "
                    f"{detail}"
                )
        event(
            log,
            "topics_created",
            topics=missing,
            partitions=settings.kafka_partitions,
            replication=settings.kafka_replication_factor,
            min_insync_replicas=settings.kafka_min_insync_replicas,
        )


async def layouts(settings: Settings) -> list[TopicLayout]:
    """The reports and dead-letter topics as the cluster has them."""
    names = topic_names(settings)
    async with admin_client(settings) as admin:
        return await _layouts(admin, names)


async def _layouts(admin: AIOKafkaAdminClient, names: list[str]) -> list[TopicLayout]:
    described = {t["topic"]: t for t in await admin.describe_topics(names)}
    present = [n for n in names if n in described and described[n]["error_code"] != _UNKNOWN_TOPIC]
    configs: dict[str, dict[str, str]] = {}
    if present:
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, n, configs=dict.fromkeys(_SHOWN_CONFIGS))
            for n in present
        ]
        for response in await admin.describe_configs(resources):
            for _code, _message, _type, name, entries in response.resources:
                configs[name] = {entry[0]: entry[1] for entry in entries}
    out = []
    for name in names:
        if name not in present:
            out.append(TopicLayout(name))
            continue
        partitions = described[name]["partitions"]
        config = configs.get(name, {})
        out.append(
            TopicLayout(
                name,
                partitions=len(partitions),
                replication=max((len(p["replicas"]) for p in partitions), default=0),
                min_insync_replicas=_int(config.get("min.insync.replicas")),
                retention_ms=_int(config.get("retention.ms")),
                under_replicated=sum(1 for p in partitions if len(p["isr"]) < len(p["replicas"])),
            )
        )
    return out


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


async def raise_partitions(settings: Settings, count: int) -> list[tuple[str, int, int]]:
    """Give both topics `count` partitions: (name, before, after) per topic. Refuses, changing
    nothing, when a topic is missing or already has more (Kafka cannot take partitions away)."""
    names = topic_names(settings)
    async with admin_client(settings) as admin:
        current = await _layouts(admin, names)
        missing = [t.name for t in current if not t.exists]
        if missing:
            raise TopicsError(
                f"topic {', '.join(missing)} does not exist yet: it is created (with "
                "PINWATCH_KAFKA_PARTITIONS partitions) when ingest or the consumer first starts"
            )
        above = [t for t in current if (t.partitions or 0) > count]
        if above:
            raise TopicsError(
                "; ".join(f"{t.name} has {t.partitions} partitions" for t in above)
                + f": Kafka cannot lower a topic's partitions, so {count} is refused and nothing "
                "was changed (a topic with fewer partitions is a new topic: a new "
                "PINWATCH_KAFKA_TOPIC, consumed once the old one is drained)"
            )
        grow = {t.name: NewPartitions(total_count=count) for t in current if t.partitions != count}
        if grow:
            await admin.create_partitions(grow)
            event(log, "partitions_raised", topics=sorted(grow), partitions=count)
        return [(t.name, int(t.partitions or 0), count) for t in current]
