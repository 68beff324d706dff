"""The prober against real TLS servers on loopback (chains from the test PKI), its metrics read
the way Prometheus reads them (an HTTP scrape of /metrics): a rotation mid-run, one of two edges
rotating, an edge that accepts and never answers, an address that stops resolving. Rounds are
driven one at a time, so nothing waits on a clock.

Tier: integration (real TLS servers and sockets, the prober in-process). The last tests run
`pinwatch probe` as a process (e2e).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import start_http_server

from devstack.certs import CertificateAuthority
from devstack.localkafka import free_port
from pinwatch.policy import load_policy
from pinwatch.roots import PublicRoots
from pinwatch.settings import Settings
from prober.probe import Prober
from tests.support.names import TEST_HOST
from tests.support.prober import pin_match, scrape, series, value, write_policy
from tests.support.tls_servers import SilentEdge, TlsEdge, free_port_on

pytestmark = pytest.mark.timeout(120)

EDGES = ("127.0.0.2", "127.0.0.3")


class Running:
    def __init__(self, prober: Prober, url: str) -> None:
        self.prober = prober
        self.url = url

    def round(self) -> dict:
        asyncio.run(self.prober.round())
        return scrape(self.url)


@pytest.fixture
def probing(
    tmp_path: Path, ca: CertificateAuthority, public_roots_file: Path
) -> Iterator[tuple[int, Callable[..., Running]]]:
    port = free_port_on(*EDGES, "127.0.0.4")
    policy_path = write_policy(
        tmp_path / "policy.yaml",
        ca,
        hosts={TEST_HOST: ("enforce", port), "cdn.pinwatch.test": ("report_only", port)},
    )
    servers = []

    def start(resolve: dict[str, list[str]], **settings: object) -> Running:
        values = {"probe_timeout_seconds": 2.0, "probe_resolve": resolve, **settings}
        prober = Prober(
            load_policy(policy_path),
            Settings(**values),
            roots=PublicRoots.load(public_roots_file),
        )
        server, _ = start_http_server(free_port(), "127.0.0.1", registry=prober.metrics.registry)
        servers.append(server)
        return Running(prober, f"http://127.0.0.1:{server.server_port}")

    yield port, start
    for server in servers:
        server.shutdown()


def test_rotation_mid_run_and_one_of_two_edges(
    probing: tuple[int, Callable[..., Running]],
    ca: CertificateAuthority,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, start = probing
    caplog.set_level(logging.INFO, logger="pinwatch.probe")
    with (
        TlsEdge(EDGES[0], port, ca, tmp_path / "a") as a,
        TlsEdge(EDGES[1], port, ca, tmp_path / "b") as b,
    ):
        a.serve("primary")
        b.serve("primary")
        probe = start({TEST_HOST: list(EDGES), "cdn.pinwatch.test": [EDGES[0]]})
        s = probe.round()
        for edge in EDGES:
            assert pin_match(s, TEST_HOST, edge, "primary") == 1
            assert pin_match(s, TEST_HOST, edge, "none") == 0
        assert value(s, "pinwatch_probe_addresses", host=TEST_HOST) == 2
        assert a.server_names and set(a.server_names) == {TEST_HOST, "cdn.pinwatch.test"}

        # Edge b is redeployed with a new key nobody pinned; edge a still serves the old one.
        rotated = b.serve("rotated")
        s = probe.round()
        assert pin_match(s, TEST_HOST, EDGES[0], "primary") == 1
        assert pin_match(s, TEST_HOST, EDGES[1], "none") == 1
        assert pin_match(s, TEST_HOST, EDGES[1], "primary") == 0
        assert series(s, "pinwatch_probe_served_leaf_info", address=EDGES[1]) == [
            {"host": TEST_HOST, "address": EDGES[1], "pin": rotated.pins[0]}
        ]
        # Phase and app come from the policy, for the alert's grouping labels.
        assert (
            value(
                s,
                "pinwatch_policy_host_info",
                app="com.example.pinned",
                host=TEST_HOST,
                phase="enforce",
            )
            == 1
        )
        assert (
            value(
                s,
                "pinwatch_policy_host_info",
                app="com.example.pinned",
                host="cdn.pinwatch.test",
                phase="report_only",
            )
            == 1
        )
        # Pin results are not errors.
        assert series(s, "pinwatch_probe_errors_total") == []

        # Then a rotation on edge a too, mid-run: the next round sees it.
        a.serve("rotated")
        s = probe.round()
        assert pin_match(s, TEST_HOST, EDGES[0], "none") == 1
        assert value(s, "pinwatch_probe_rounds_total") == 3

    changes = [r for r in caplog.records if r.getMessage() == "probe_result"]
    unpinned = [r for r in changes if r.pin_match == "none" and r.host == TEST_HOST]
    assert [(r.address, r.previous, r.enforced_clients_fail) for r in unpinned] == [
        (EDGES[1], "primary", True),
        (EDGES[0], "primary", True),
    ]
    assert all(r.leaf_pin == rotated.pins[0] for r in unpinned)
    # Unchanged results are not logged again: 3 first sightings (a, b, cdn on a) + 2 changes
    # + cdn on a also rotated with it.
    assert len(changes) == 6


def test_an_edge_that_never_answers_is_an_error_not_a_pin_failure(
    probing: tuple[int, Callable[..., Running]], ca: CertificateAuthority, tmp_path: Path
) -> None:
    port, start = probing
    with TlsEdge(EDGES[0], port, ca, tmp_path / "a") as a, SilentEdge(EDGES[1], port):
        a.serve("primary")
        probe = start(
            {TEST_HOST: list(EDGES), "cdn.pinwatch.test": [EDGES[0]]}, probe_timeout_seconds=1.0
        )
        started = time.monotonic()
        s = probe.round()
        # A hung edge costs one timeout, not the round: handshakes run side by side.
        assert time.monotonic() - started < 10
        assert (
            value(
                s, "pinwatch_probe_errors_total", host=TEST_HOST, address=EDGES[1], reason="timeout"
            )
            == 1
        )
        assert value(s, "pinwatch_probe_success", host=TEST_HOST, address=EDGES[1]) == 0
        assert series(s, "pinwatch_probe_pin_match", address=EDGES[1]) == []
        assert value(s, "pinwatch_probe_success", host=TEST_HOST, address=EDGES[0]) == 1
        assert pin_match(s, TEST_HOST, EDGES[0], "primary") == 1
        assert (
            value(
                s, "pinwatch_probe_last_success_timestamp_seconds", host=TEST_HOST, address=EDGES[0]
            )
            > time.time() - 60
        )
        s = probe.round()
        assert (
            value(
                s, "pinwatch_probe_errors_total", host=TEST_HOST, address=EDGES[1], reason="timeout"
            )
            == 2
        )


def test_an_address_that_stops_resolving_loses_its_series(
    probing: tuple[int, Callable[..., Running]], ca: CertificateAuthority, tmp_path: Path
) -> None:
    port, start = probing
    with (
        TlsEdge(EDGES[0], port, ca, tmp_path / "a") as a,
        TlsEdge(EDGES[1], port, ca, tmp_path / "b") as b,
    ):
        a.serve("primary")
        b.serve("backup")
        resolve = {TEST_HOST: list(EDGES), "cdn.pinwatch.test": [EDGES[0]]}
        probe = start(resolve, probe_max_addresses_per_host=1)
        s = probe.round()
        # Capped at one address per host: the other is counted, not probed.
        assert value(s, "pinwatch_probe_addresses_dropped", host=TEST_HOST) == 1
        assert series(s, "pinwatch_probe_pin_match", address=EDGES[1]) == []
        probe.prober.overrides[TEST_HOST] = [EDGES[1]]
        s = probe.round()
        assert series(s, "pinwatch_probe_pin_match", host=TEST_HOST, address=EDGES[0]) == []
        assert series(s, "pinwatch_probe_served_leaf_info", host=TEST_HOST, address=EDGES[0]) == []
        assert pin_match(s, TEST_HOST, EDGES[1], "backup") == 1
