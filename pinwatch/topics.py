"""Topics are created by pinwatch with explicit partitions and retention, never auto-created."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pinwatch.logs import event
from pinwatch.settings import Settings

log = logging.getLogger("pinwatch.topics")


async def ensure_topics(settings: Settings, names: list[str] | None = None) -> None:
    names = names or [settings.kafka_topic, settings.kafka_dead_letter_topic]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        retention_ms = str(settings.kafka_retention_hours * 3600 * 1000)
        topics = [
            NewTopic(
                name,
                settings.kafka_partitions,
                settings.kafka_replication_factor,
                topic_configs={"retention.ms": retention_ms, "compression.type": "producer"},
            )
            for name in missing
        ]
        try:
            await admin.create_topics(topics)
        except TopicAlreadyExistsError:
            pass  # another process won the race; the topic is there, which is all we need
        event(log, "topics_created", topics=missing, partitions=settings.kafka_partitions)
    finally:
        await admin.close()
