"""The local broker: the cluster id it draws, the errors a failed format shows, free ports."""

from __future__ import annotations

import base64
import socket
import uuid

from devstack.localkafka import free_ports, new_cluster_id

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
