"""A PKI for a local broker's TLS listeners, made in the test with `cryptography`: a CA, the
broker's certificate for 127.0.0.1 and localhost, a client certificate for mutual TLS (its key
encrypted, so the key password setting is exercised), and a second CA that signed nothing the
broker serves (the "untrusted" one).

    pki = KafkaPki.create(tmp_path / "kafka-pki")
    broker = LocalKafka(..., tls=pki.broker_tls({"pinwatch": "pw"}), ssl_port=.., sasl_ssl_port=..)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack.localkafka import BrokerTls, LocalKafka

CLIENT_KEY_PASSWORD = "client-key-password-0123"
SCRAM_USER, SCRAM_PASSWORD = "pinwatch", "scram-password-never-shown-0123"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> str:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


@dataclass
class _Issuer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def root(cls, common: str) -> _Issuer:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(_name(common), _name(common), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self, common: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(_name(common), self.cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )


@dataclass(frozen=True)
class KafkaPki:
    ca_file: Path  # the CA that signed the broker's and the client's certificates
    untrusted_ca_file: Path  # a CA that signed neither
    client_cert_file: Path
    client_key_file: Path  # encrypted with CLIENT_KEY_PASSWORD
    broker_chain_pem: str
    broker_key_pem: str

    @classmethod
    def create(cls, directory: Path) -> KafkaPki:
        directory.mkdir(parents=True, exist_ok=True)
        ca, other = _Issuer.root("pinwatch test Kafka CA"), _Issuer.root("Someone else's CA")
        loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        broker_key, broker = ca.issue("kafka broker", ExtendedKeyUsageOID.SERVER_AUTH, loopback)
        client_key, client = ca.issue("pinwatch", ExtendedKeyUsageOID.CLIENT_AUTH, [])
        files = {
            "ca.pem": _pem(ca.cert),
            "untrusted-ca.pem": _pem(other.cert),
            "client.pem": _pem(client) + _pem(ca.cert),
            "client.key.pem": _key_pem(client_key, CLIENT_KEY_PASSWORD),
        }
        for name, text in files.items():
            (directory / name).write_text(text)
        return cls(
            ca_file=directory / "ca.pem",
            untrusted_ca_file=directory / "untrusted-ca.pem",
            client_cert_file=directory / "client.pem",
            client_key_file=directory / "client.key.pem",
            broker_chain_pem=_pem(broker) + _pem(ca.cert),
            broker_key_pem=_key_pem(broker_key),
        )

    def broker_tls(self, scram_users: dict[str, str]) -> BrokerTls:
        return BrokerTls(
            cert_chain_pem=self.broker_chain_pem,
            key_pem=self.broker_key_pem,
            client_ca_pem=self.ca_file.read_text(),
            scram_users=scram_users,
        )


@dataclass(frozen=True)
class TlsKafka:
    """A broker with an SSL listener (mutual TLS) and a SASL_SSL listener (SCRAM user
    SCRAM_USER / SCRAM_PASSWORD), and the PKI its certificates come from (the `tls_kafka`
    fixture). `ssl()` and `sasl_ssl()` are a test's settings for one listener."""

    broker: LocalKafka
    pki: KafkaPki

    def ssl(self, **overrides: Any) -> dict[str, Any]:
        return {
            "kafka_bootstrap": self.broker.ssl_bootstrap,
            "kafka_security_protocol": "SSL",
            "kafka_ssl_ca_file": self.pki.ca_file,
            "kafka_ssl_cert_file": self.pki.client_cert_file,
            "kafka_ssl_key_file": self.pki.client_key_file,
            "kafka_ssl_key_password": CLIENT_KEY_PASSWORD,
            **overrides,
        }

    def sasl_ssl(self, **overrides: Any) -> dict[str, Any]:
        return {
            "kafka_bootstrap": self.broker.sasl_ssl_bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_ssl_ca_file": self.pki.ca_file,
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": SCRAM_USER,
            "kafka_sasl_password": SCRAM_PASSWORD,
            **overrides,
        }
