"""The unit tier runs without services and without the network: a test that needs Kafka,
ClickHouse or a socket connection belongs in tests/integration."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

_WHY = "unit tests use no services and no network; move this test to tests/integration"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    raise pytest.UsageError(f"kafka_bootstrap requested: {_WHY}")


@pytest.fixture(scope="session")
def chdb_dsn() -> str:
    raise pytest.UsageError(f"chdb_dsn requested: {_WHY}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"connection attempted: {_WHY}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
