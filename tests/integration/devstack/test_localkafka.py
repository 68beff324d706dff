"""The local broker's storage format with the real Kafka tool."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from devstack import localkafka
from devstack.localkafka import KafkaError, LocalKafka, free_ports
from pinwatch.settings import Settings

# 0xf8 = 0b111110..., and 62 is '-' in the url-safe alphabet.
DASH_FIRST = uuid.UUID(bytes=b"\xf8" + bytes(range(1, 16)))


def _broker(tmp_path: Path) -> LocalKafka:
    port, controller_port = free_ports(2)
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_controller_port=controller_port,
        data_dir=tmp_path,
    )
    return LocalKafka.from_settings(settings)


def test_format_takes_an_id_the_tool_could_mistake_for_an_option(tmp_path, monkeypatch):
    dash_id = base64.urlsafe_b64encode(DASH_FIRST.bytes).decode().rstrip("=")
    assert dash_id.startswith("-")
    monkeypatch.setattr(localkafka, "new_cluster_id", lambda: dash_id)
    broker = _broker(tmp_path)
    broker.format_storage()
    meta = (broker.data_dir / "logs" / "meta.properties").read_text()
    assert f"cluster.id={dash_id}" in meta


def test_a_failed_format_shows_the_tools_own_error(tmp_path):
    broker = _broker(tmp_path)
    broker.data_dir.mkdir(parents=True)
    (broker.data_dir / "logs").write_text("a file where the log directory belongs")
    with pytest.raises(KafkaError) as failure:
        broker.format_storage()
    message = str(failure.value)
    assert "exit 1" in message and "No available log directories to format" in message
    assert "No available log directories to format" in broker.log_path.read_text()
