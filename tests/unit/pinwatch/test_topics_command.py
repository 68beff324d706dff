"""`pinwatch topics` without a broker: its --help, and how a topic's layout reads (the broker
tests: tests/integration/pinwatch/test_topics.py)."""

from __future__ import annotations

import pytest

from pinwatch.cli import build_parser
from pinwatch.cmd_topics import describe
from pinwatch.settings import Settings
from pinwatch.topics import TopicLayout


def test_help_says_what_it_shows_and_that_it_never_lowers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["topics", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--partitions N raise both topics to N partitions (never lowers)" in text
    assert "Kafka cannot take partitions away" in text


def test_a_layout_reads_with_what_needs_attention() -> None:
    settings = Settings(kafka_replication_factor=3, kafka_min_insync_replicas=2)
    healthy = TopicLayout("r", 12, 3, 2, 604_800_000)
    assert describe(healthy, settings) == (
        "r: 12 partitions, replication 3, min.insync.replicas 2, retention 168 h"
    )
    degraded = TopicLayout("r", 12, 3, 1, 86_400_000, under_replicated=4)
    assert describe(degraded, settings) == (
        "r: 12 partitions, replication 3, min.insync.replicas 1, retention 24 h; "
        "4 partitions under-replicated (a broker is down?); PINWATCH_KAFKA_MIN_INSYNC_REPLICAS "
        "says 2 (applied to topics pinwatch creates; change this one with kafka-configs.sh)"
    )
    assert describe(TopicLayout("r"), settings) == (
        "r: not created yet (ingest or the consumer creates it at start with 2 partitions, "
        "replication 3, min.insync.replicas 2)"
    )
