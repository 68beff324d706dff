"""Settings for tests: the session's real components with topics, a consumer group and a
ClickHouse database of the test's own, so tests never collide."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pinwatch.settings import Settings


def settings_factory(
    kafka_bootstrap: str, chdb_dsn: str, policy_file: Path, public_roots_file: Path, data_dir: Path
) -> Callable[..., Settings]:
    """`make(**overrides)` building Settings on these components, with topics, consumer group
    and ClickHouse database of their own, the same for every call of one factory. For fixtures
    wider than a test, which cannot use `make_settings`."""
    suffix = uuid.uuid4().hex[:10]

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "kafka_topic": f"reports-{suffix}",
            "kafka_dead_letter_topic": f"dead-letter-{suffix}",
            "kafka_consumer_group": f"group-{suffix}",
            "clickhouse_dsn": chdb_dsn,
            "clickhouse_database": f"pw_{suffix}",
            "policy_file": policy_file,
            "public_roots_file": public_roots_file,
            "data_dir": data_dir,
            "log_format": "text",
        }
        values.update(overrides)
        return Settings(**values)

    return make
