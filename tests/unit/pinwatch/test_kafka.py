"""How pinwatch connects to Kafka, without a broker: the client arguments for each security
protocol, settings that cannot work refused naming the variable, and each kind of refused
connection turned into advice that names the setting (the broker tests prove the same against
real listeners: tests/integration/pinwatch/test_kafka_security.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from pinwatch.kafka import KafkaStartError, client_args, explain
from pinwatch.settings import Settings, SettingsError, load_settings
from tests.support.kafka_tls import CLIENT_KEY_PASSWORD, KafkaPki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> KafkaPki:
    return KafkaPki.create(tmp_path_factory.mktemp("kafka-pki"))


def test_plaintext_is_the_default_and_carries_no_tls_or_sasl() -> None:
    assert client_args(Settings(kafka_bootstrap="k1:9092,k2:9092")) == {
        "bootstrap_servers": "k1:9092,k2:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_carries_the_credentials_and_a_verifying_context(pki: KafkaPki) -> None:
    args = client_args(
        Settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-256",
            kafka_sasl_username="svc",
            kafka_sasl_password="s3cret-password",
            kafka_ssl_ca_file=pki.ca_file,
        )
    )
    assert args["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (args["sasl_plain_username"], args["sasl_plain_password"]) == ("svc", "s3cret-password")
    context = args["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "pinwatch test Kafka CA"),),)
    ]


def test_ssl_loads_the_encrypted_client_key_with_its_password(pki: KafkaPki) -> None:
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=pki.ca_file,
        kafka_ssl_cert_file=pki.client_cert_file,
        kafka_ssl_key_file=pki.client_key_file,
        kafka_ssl_key_password=CLIENT_KEY_PASSWORD,
        kafka_ssl_check_hostname=False,
    )
    args = client_args(settings)
    assert "sasl_mechanism" not in args
    assert args["ssl_context"].check_hostname is False


def test_a_wrong_key_password_is_refused_naming_the_settings_not_prompted(
    pki: KafkaPki,
) -> None:
    """Without a password callback OpenSSL would prompt on the terminal: a service hangs."""
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cert_file=pki.client_cert_file,
        kafka_ssl_key_file=pki.client_key_file,
        kafka_ssl_key_password="not-the-key-password",
    )
    with pytest.raises(KafkaStartError) as failure:
        client_args(settings)
    message = str(failure.value)
    assert "PINWATCH_KAFKA_SSL_KEY_PASSWORD" in message
    assert "not-the-key-password" not in message


def test_an_unreadable_ca_file_is_refused_naming_it(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    for path in (bogus, tmp_path / "missing.pem"):
        with pytest.raises(KafkaStartError, match=f"PINWATCH_KAFKA_SSL_CA_FILE \\({path}\\)"):
            client_args(Settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=path))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "PINWATCH_KAFKA_SASL_PASSWORD: both are needed"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "with PINWATCH_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT",
        ),
        ({"kafka_ssl_ca_file": "/ca.pem"}, "PINWATCH_KAFKA_SSL_CA_FILE: set, but"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "/c.pem"},
            "PINWATCH_KAFKA_SSL_KEY_FILE: give both or neither",
        ),
        (
            {"kafka_replication_factor": 1, "kafka_min_insync_replicas": 2},
            "PINWATCH_KAFKA_MIN_INSYNC_REPLICAS (2) is above PINWATCH_KAFKA_REPLICATION_FACTOR",
        ),
        ({"kafka_security_protocol": "SASL_GSSAPI"}, "PINWATCH_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "PINWATCH_KAFKA_SASL_MECHANISM"),
    ],
)
def test_settings_that_cannot_connect_are_refused_naming_the_variable(
    values: dict[str, object], named: str
) -> None:
    with pytest.raises(SettingsError) as failure:
        load_settings(**values)
    assert named in str(failure.value)


def test_an_empty_file_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINWATCH_KAFKA_SSL_CA_FILE", "")
    assert Settings().kafka_ssl_ca_file is None


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    exc.verify_code, exc.verify_message = code, message
    return exc


SASL = Settings(
    kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc", kafka_sasl_password="pw-x9"
)


@pytest.mark.parametrize(
    ("exc", "advice"),
    [
        (
            _verify_error(19, "self-signed certificate in certificate chain"),
            "the broker's certificate at k:9093 is not trusted (self-signed certificate in "
            "certificate chain): check PINWATCH_KAFKA_SSL_CA_FILE (now: the system's trusted CAs)",
        ),
        (
            _verify_error(62, "Hostname mismatch, certificate is not valid for 'k'."),
            "does not name k (Hostname mismatch, certificate is not valid for 'k'.): check "
            "PINWATCH_KAFKA_BOOTSTRAP (use a name the certificate holds) or "
            "PINWATCH_KAFKA_SSL_CHECK_HOSTNAME",
        ),
        (
            SaslAuthenticationFailed("Authentication failed: invalid credentials"),
            "k:9093 refused the SASL credentials of user 'svc' (SCRAM-SHA-512): check "
            "PINWATCH_KAFKA_SASL_USERNAME, PINWATCH_KAFKA_SASL_PASSWORD",
        ),
        (ConnectionRefusedError(111, "Connect call failed"), "nothing listens at k:9093"),
        (TimeoutError(), "k:9093 did not answer within 15s"),
        (
            KafkaConnectionError("Connection at k:9093 closed"),
            "k:9093 closed the connection (KafkaConnectionError: Connection at k:9093 closed): "
            "check PINWATCH_KAFKA_SECURITY_PROTOCOL (now SASL_SSL)",
        ),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            "the TLS handshake with k:9093 failed",
        ),
    ],
)
def test_each_refusal_is_explained_naming_the_setting_and_no_secret(
    exc: BaseException, advice: str
) -> None:
    message = explain(exc, "k:9093", SASL)
    assert advice in message
    assert "pw-x9" not in message
