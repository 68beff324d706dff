"""The commands an operator starts against a Kafka that refuses them (a wrong SASL password, a
broker certificate no configured CA signed): each exits at once with a line on stderr that
names the setting to check, and the password appears nowhere in what it printed or logged."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pinwatch.settings import Settings
from tests.support.kafka_tls import SCRAM_PASSWORD, TlsKafka

PINWATCH = [sys.executable, "-m", "pinwatch.cli"]
WRONG = "wrong-password-never-shown-4321"

CASES = {
    "wrong password": (
        lambda k: k.sasl_ssl(kafka_sasl_password=WRONG),
        "refused the SASL credentials of user 'pinwatch' (SCRAM-SHA-512): check "
        "PINWATCH_KAFKA_SASL_USERNAME, PINWATCH_KAFKA_SASL_PASSWORD and "
        "PINWATCH_KAFKA_SASL_MECHANISM",
    ),
    "untrusted certificate": (
        lambda k: k.sasl_ssl(kafka_ssl_ca_file=k.pki.untrusted_ca_file),
        "is not trusted (self-signed certificate in certificate chain): check "
        "PINWATCH_KAFKA_SSL_CA_FILE",
    ),
}


@pytest.mark.parametrize("command", ["ingest", "consume", "topics"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_command_exits_at_start_naming_the_setting(
    command: str,
    case: str,
    tls_kafka: TlsKafka,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    values, expected = CASES[case]
    settings = make_settings(**values(tls_kafka), clickhouse_dsn=f"chdb:///{tmp_path / 'chdb'}")
    env = {**os.environ, **settings.env_vars(list(Settings.model_fields))}
    done = subprocess.run(
        [*PINWATCH, command, *(["--port", "0"] if command != "topics" else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails here; the refusal itself comes within seconds
    )
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pinwatch {command}: "), done.stderr
    assert expected in last
    assert f"Kafka at {settings.kafka_bootstrap}" in last
    for secret in (WRONG, SCRAM_PASSWORD):
        assert secret not in done.stdout + done.stderr
