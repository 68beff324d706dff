"""Kafka over TLS and SASL: reports go end to end (real ingest -> broker -> consumer -> chDB)
through the broker's SSL listener (mutual TLS, the client key encrypted) and its SASL_SSL
listener (SCRAM-SHA-256 and -512), and the dead-letter producer and topic admin use the same
connection. A wrong password, an untrusted broker certificate, a missing client certificate or
a listener that never answers stop every client at start, with a message naming the setting
to check and no secret in it. The broker and its certificates are the `tls_kafka` fixture's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from consumers.consumer import Consumer
from consumers.store import Store
from devstack.clients import native_batch, network_error
from ingest.producer import KafkaSink
from pinwatch.kafka import KafkaStartError
from pinwatch.settings import Settings
from pinwatch.topics import ensure_topics, layouts
from tests.support.kafka_tls import SCRAM_PASSWORD, TlsKafka
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.pipeline import produce, read_topic, run_pipeline

LISTENERS = {
    "SSL, client certificate": lambda k: k.ssl(),
    "SASL_SSL, SCRAM-SHA-256": lambda k: k.sasl_ssl(kafka_sasl_mechanism="SCRAM-SHA-256"),
    "SASL_SSL, SCRAM-SHA-512": lambda k: k.sasl_ssl(),
}


@pytest.mark.parametrize("listener", list(LISTENERS))
async def test_reports_go_end_to_end_through_the_listener(
    listener: str, tls_kafka: TlsKafka, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(**LISTENERS[listener](tls_kafka))
    async with run_pipeline(settings) as p:
        reports = [network_error(TEST_HOST, "timeout", count=2) for _ in range(3)]
        answer = await p.post(native_batch(reports, app=TEST_APP))
        assert answer.json()["accepted"] == 3
        await p.wait_inserted(3, timeout=60)
        stored = {row[0] for row in await p.store.query("SELECT id FROM {db}.reports")}
        assert stored == {r["id"] for r in reports}
        # The consumer's dead-letter producer talks through the same listener.
        await produce(settings, [b"not a record batch"])
        dead = await read_topic(settings, settings.kafka_dead_letter_topic, 1)
        assert [m.value for m in dead] == [b"not a record batch"]
    (topic, _) = await layouts(settings)
    assert (topic.partitions, topic.replication, topic.min_insync_replicas) == (2, 1, 1)


@contextlib.asynccontextmanager
async def _consumer(settings: Settings) -> AsyncIterator[Consumer]:
    store = Store.from_settings(settings)
    try:
        yield Consumer(settings, store)
    finally:
        await store.close()


async def _start_every_client(settings: Settings) -> list[str]:
    """Start topic admin, ingest's producer and the consumer, each on its own; the message each
    failed with (each must fail)."""
    messages = []

    async def sink() -> None:
        await KafkaSink(settings).start()

    async def consumer() -> None:
        async with _consumer(settings) as engine:
            await engine.start()

    for start in (lambda: ensure_topics(settings), sink, consumer):
        with pytest.raises(KafkaStartError) as failure:
            # Far inside the bound: it fails on the refusal, not by waiting out a timeout.
            await asyncio.wait_for(start(), 30)
        messages.append(str(failure.value))
    return messages


BAD = {
    "wrong password": (
        lambda k: k.sasl_ssl(kafka_sasl_password="wrong-password-never-shown"),
        "refused the SASL credentials of user 'pinwatch' (SCRAM-SHA-512): check "
        "PINWATCH_KAFKA_SASL_USERNAME, PINWATCH_KAFKA_SASL_PASSWORD",
    ),
    "unknown user": (
        lambda k: k.sasl_ssl(kafka_sasl_username="nobody"),
        "refused the SASL credentials of user 'nobody'",
    ),
    "untrusted broker certificate, SASL_SSL": (
        lambda k: k.sasl_ssl(kafka_ssl_ca_file=k.pki.untrusted_ca_file),
        "certificate at 127.0.0.1:{port} is not trusted (self-signed certificate in certificate "
        "chain): check PINWATCH_KAFKA_SSL_CA_FILE",
    ),
    "untrusted broker certificate, SSL": (
        lambda k: k.ssl(kafka_ssl_ca_file=k.pki.untrusted_ca_file),
        "is not trusted",
    ),
    "no client certificate": (
        lambda k: k.ssl(kafka_ssl_cert_file=None, kafka_ssl_key_file=None),
        "set PINWATCH_KAFKA_SSL_CERT_FILE and PINWATCH_KAFKA_SSL_KEY_FILE",
    ),
    "plaintext to a TLS listener": (
        lambda k: {"kafka_bootstrap": k.broker.sasl_ssl_bootstrap},
        "check PINWATCH_KAFKA_SECURITY_PROTOCOL (now PLAINTEXT)",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_a_refused_connection_stops_every_client_at_start_naming_the_setting(
    case: str, tls_kafka: TlsKafka, make_settings: Callable[..., Settings]
) -> None:
    values, expected = BAD[case]
    overrides: dict[str, Any] = values(tls_kafka)
    settings = make_settings(**overrides)
    port = settings.kafka_bootstrap.rsplit(":", 1)[1]
    for message in await _start_every_client(settings):
        assert expected.format(port=port) in message, message
        assert f"at {settings.kafka_bootstrap}" in message
        for secret in (SCRAM_PASSWORD, "wrong-password-never-shown", "client-key-password"):
            assert secret not in message


async def test_a_listener_that_never_answers_is_cut_off_at_the_connect_timeout(
    make_settings: Callable[..., Settings],
) -> None:
    """An address that accepts and then says nothing (a firewall, the wrong service): the start
    gives up after PINWATCH_KAFKA_CONNECT_TIMEOUT_SECONDS and says so."""

    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # holds the connection open, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = make_settings(
            kafka_bootstrap=f"127.0.0.1:{port}", kafka_connect_timeout_seconds=1.0
        )
        for message in await _start_every_client(settings):
            assert f"127.0.0.1:{port} did not answer within 1s: check PINWATCH_KAFKA_BOOTSTRAP" in (
                message
            ), message
    finally:
        server.close()
        for writer in held:
            writer.close()
