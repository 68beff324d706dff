"""The local broker: the cluster id it draws, free ports, and the configuration a three-node
cluster and the TLS listeners are started with."""

from __future__ import annotations

import base64
import socket
import uuid
from pathlib import Path

from devstack.localkafka import (
    BrokerTls,
    LocalKafka,
    LocalKafkaCluster,
    free_ports,
    new_cluster_id,
)
from pinwatch.settings import Settings

# 0xf8 = 0b111110..., and 62 is '-' in the url-safe alphabet.
DASH_FIRST = uuid.UUID(bytes=b"\xf8" + bytes(range(1, 16)))


def test_cluster_id_never_starts_with_a_dash():
    draws = iter([DASH_FIRST, uuid.UUID(int=42)])
    cluster_id = new_cluster_id(lambda: next(draws))
    assert not cluster_id.startswith("-")
    assert base64.urlsafe_b64decode(cluster_id + "==") == uuid.UUID(int=42).bytes


def test_cluster_ids_are_22_url_safe_characters_of_16_bytes():
    for _ in range(500):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22 and cluster_id[0] != "-"
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_free_ports_are_distinct_and_free():
    ports = free_ports(64)
    assert len(set(ports)) == 64
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def _props(node: LocalKafka) -> dict[str, str]:
    lines = node._properties().read_text().splitlines()  # noqa: SLF001 - what the JVM reads
    return dict(line.split("=", 1) for line in lines if line)


def test_a_cluster_is_three_voters_with_kafkas_own_topics_on_all_three(tmp_path: Path) -> None:
    ports = list(range(40001, 40007))
    cluster = LocalKafkaCluster.on_ports(Settings(), tmp_path, ports)
    assert cluster.bootstrap == "127.0.0.1:40001,127.0.0.1:40002,127.0.0.1:40003"
    voters = "1@127.0.0.1:40004,2@127.0.0.1:40005,3@127.0.0.1:40006"
    for i, node in enumerate(cluster.nodes, start=1):
        node.data_dir.mkdir(parents=True)
        props = _props(node)
        assert props["node.id"] == str(i) and props["controller.quorum.voters"] == voters
        assert props["process.roles"] == "broker,controller"
        assert (
            props["listeners"]
            == f"PLAINTEXT://127.0.0.1:4000{i},CONTROLLER://127.0.0.1:4000{i + 3}"
        )
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.min.isr"] == "2"


def test_tls_listeners_require_a_client_certificate_on_ssl_and_scram_on_sasl_ssl(
    tmp_path: Path,
) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----\n"
    tls = BrokerTls(cert_chain_pem=pem, key_pem=pem, client_ca_pem=pem)
    node = LocalKafka(Settings(), tmp_path, 1, 2, tls=tls, ssl_port=3, sasl_ssl_port=4)
    props = _props(node)
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:1,SSL://127.0.0.1:3,SASL_SSL://127.0.0.1:4,CONTROLLER://127.0.0.1:2"
    )
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["listener.security.protocol.map"] == (
        "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    )
    # One line each: Java reads `\n` back as the newlines of the PEM.
    assert props["ssl.keystore.certificate.chain"] == pem.strip().replace("\n", "\\n")
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert props["listener.name.ssl.ssl.client.auth"] == "required"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256,SCRAM-SHA-512"
    for mechanism in ("scram-sha-256", "scram-sha-512"):
        assert (
            "ScramLoginModule required"
            in props[f"listener.name.sasl_ssl.{mechanism}.sasl.jaas.config"]
        )
