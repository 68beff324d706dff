"""Session fixtures: real components started once, cleaned up even on failure.

Tiers are folders: tests/unit (no services, no network: `pytest tests/unit` in the venv, in
under a minute), tests/integration (real Kafka, chDB, Prometheus, Alertmanager, promtool),
tests/e2e (pinwatch commands and whole stacks as processes). Each test gets its tier as a marker
(`-m unit`, `-m "not e2e"`). Shared helpers live in tests/support.

- Kafka: a real local broker (devstack.localkafka) on free loopback ports, or an already running
  one named by PINWATCH_TEST_KAFKA_BOOTSTRAP (handy while developing: start one with
  `deploy/kafka.sh start` and reuse it). Every test gets its own topics, so they never collide.
- ClickHouse: chDB allows one data directory per process, so the whole test session shares one
  (PINWATCH_TEST_CHDB_DSN) and each test isolates itself with its own database name.
- Certificates: a fresh test PKI per session (devstack.certs), with a policy that pins it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.certs import CertificateAuthority
from devstack.localkafka import LocalKafka, free_ports, scratch_broker
from devstack.simulate import Chains, Population, PopulationConfig, build_population
from pinwatch.policy import load_policy
from pinwatch.settings import Settings
from tests.support.kafka_tls import SCRAM_PASSWORD, SCRAM_USER, KafkaPki, TlsKafka
from tests.support.names import (
    REPORT_ONLY_HOST,
    TEST_APP,
    TEST_HOST,
    TEST_KEY,
)
from tests.support.settings import settings_factory


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pinwatch")


@pytest.fixture(scope="session")
def kafka_bootstrap(session_dir: Path) -> Iterator[str]:
    external = os.environ.get("PINWATCH_TEST_KAFKA_BOOTSTRAP")
    with scratch_broker(session_dir / "broker", bootstrap=external) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def tls_kafka(session_dir: Path) -> Iterator[TlsKafka]:
    """A broker with TLS listeners, started for the tests that ask for it; certificates made
    here (tests/support/kafka_tls.py)."""
    pki = KafkaPki.create(session_dir / "kafka-pki")
    port, controller, ssl_port, sasl_port = free_ports(4)
    broker = LocalKafka(
        settings=Settings(kafka_heap="256m"),
        data_dir=session_dir / "tls-broker",
        port=port,
        controller_port=controller,
        tls=pki.broker_tls({SCRAM_USER: SCRAM_PASSWORD}),
        ssl_port=ssl_port,
        sasl_ssl_port=sasl_port,
    )
    broker.start()
    try:
        yield TlsKafka(broker, pki)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def chdb_dsn(session_dir: Path) -> str:
    return os.environ.get("PINWATCH_TEST_CHDB_DSN") or f"chdb:///{session_dir / 'chdb'}"


@pytest.fixture(scope="session")
def ca(session_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load(session_dir / "pki", host=TEST_HOST)


@pytest.fixture(scope="session")
def public_roots_file(ca: CertificateAuthority, session_dir: Path) -> Path:
    path = session_dir / "public-roots.pem"
    path.write_bytes(ca.public_roots_pem())
    return path


@pytest.fixture(scope="session")
def policy_file(ca: CertificateAuthority, session_dir: Path) -> Path:
    path = session_dir / "policy.yaml"
    pins = (
        f'      - {{sha256: "{ca.pin("primary")}", role: primary, label: leaf}}\n'
        f'      - {{sha256: "{ca.pin("backup")}", role: backup, label: offline-backup}}\n'
    )
    path.write_text(
        "apps:\n"
        f"  - id: {TEST_APP}\n"
        f'    ingest_keys: ["{TEST_KEY}"]\n'
        "  - id: com.example.other\n"
        '    ingest_keys: ["other-ingest-key-0123456789"]\n'
        "hosts:\n"
        f"  - host: {TEST_HOST}\n"
        "    include_subdomains: true\n"
        "    phase: enforce\n"
        "    pins:\n" + pins + f"  - host: {REPORT_ONLY_HOST}\n"
        "    phase: report_only\n"
        "    pins:\n" + pins
    )
    return path


@pytest.fixture
def population(policy_file: Path) -> Population:
    """A small simulated app population on the test policy (devstack.simulate)."""
    return build_population(load_policy(policy_file), PopulationConfig(devices=40, networks=4))


@pytest.fixture
def chains(session_dir: Path, ca: CertificateAuthority) -> Chains:
    """The simulator's served chains, from the session's test PKI."""
    return Chains(session_dir / "pki")


@pytest.fixture
def make_settings(
    kafka_bootstrap: str,
    chdb_dsn: str,
    policy_file: Path,
    public_roots_file: Path,
    tmp_path: Path,
) -> Callable[..., Settings]:
    """Settings for one test: the session's real components, but topics, consumer group and
    ClickHouse database of its own."""
    return settings_factory(
        kafka_bootstrap, chdb_dsn, policy_file, public_roots_file, tmp_path / "data"
    )


@pytest.fixture(scope="module")
def make_module_settings(
    chdb_dsn: str, policy_file: Path, public_roots_file: Path, tmp_path_factory: Any
) -> Callable[..., Settings]:
    """`make_settings` for a module's fixtures, without Kafka (for tests that drive the
    consumer's steps by hand, tests/support/pipeline.HandDriven): no broker is started."""
    return settings_factory(
        "127.0.0.1:9", chdb_dsn, policy_file, public_roots_file, tmp_path_factory.mktemp("data")
    )


@pytest.fixture
async def pipeline(make_settings: Callable[..., Settings]) -> AsyncIterator[Any]:
    """The whole pipeline (tests/support/pipeline.py) on this test's topics and database; for other
    settings use `async with run_pipeline(make_settings(...))` directly."""
    from tests.support.pipeline import run_pipeline

    async with run_pipeline(make_settings()) as running:
        yield running


TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the tier its folder names."""
    root = Path(__file__).parent
    for item in items:
        parts = Path(item.path).relative_to(root).parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
