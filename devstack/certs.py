"""Real certificate chains for tests, benchmarks and the simulator.

A "public" root (stands in for a publicly trusted CA: tests point PINWATCH_PUBLIC_ROOTS_FILE at
it), a private root (a corporate TLS-inspecting proxy), an intermediate, the pinned leaf key, an
offline backup key, and an unpinned "rotated" key. Generated once per directory and cached,
because RSA/EC key generation is the slow part.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pinwatch.pins import spki_pin, spki_pin_of_key
from pinwatch.resources import package_path
from pinwatch.settings import Settings

# Committed test keys (not secrets) that the example policy pins: what `pinwatch simulate`,
# `up` and `demo` serve unless `simulate_pki_dir` names others.
DEMO_PKI = package_path("devstack", "demo_pki")


def demo_pki_dir(settings: Settings) -> Path:
    return settings.simulate_pki_dir or DEMO_PKI


_KEYS = ("public_root", "private_root", "intermediate", "primary", "backup", "rotated", "proxy")


@dataclass(frozen=True)
class Chain:
    """A served chain, leaf first, as DER certificates."""

    certs: tuple[x509.Certificate, ...]

    @property
    def der(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.certs]

    @property
    def b64(self) -> list[str]:
        return [base64.b64encode(d).decode("ascii") for d in self.der]

    @property
    def pem(self) -> list[str]:
        return [c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in self.certs]

    @property
    def pins(self) -> list[str]:
        return [spki_pin(c) for c in self.certs]


class CertificateAuthority:
    """Keys and chains for one simulated host. `CertificateAuthority.load(dir, host)` caches."""

    def __init__(self, keys: dict[str, ec.EllipticCurvePrivateKey], host: str) -> None:
        self.keys = keys
        self.host = host
        now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        self._not_before, self._not_after = now, now + dt.timedelta(days=3650)
        self.public_root = self._cert("pinwatch Test Public Root CA", "public_root", None, ca=True)
        self.private_root = self._cert("Corp TLS Inspection Root", "private_root", None, ca=True)
        self.intermediate = self._cert(
            "pinwatch Test Issuing CA", "intermediate", self.public_root, ca=True
        )

    @classmethod
    def load(cls, directory: Path, host: str = "api.example.com") -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        keys = {}
        for name in _KEYS:
            path = directory / f"{name}.key.pem"
            if path.exists():
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            else:
                key = ec.generate_private_key(ec.SECP256R1())
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(
                    key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
                tmp.replace(path)
            keys[name] = key
        return cls(keys, host)  # type: ignore[arg-type]

    def _name(self, cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def _cert(
        self,
        cn: str,
        key_name: str,
        issuer: x509.Certificate | None,
        *,
        ca: bool,
        issuer_key: str | None = None,
        not_after: dt.datetime | None = None,
    ) -> x509.Certificate:
        key = self.keys[key_name]
        signer = self.keys[issuer_key or _issuer_key_name(self, issuer) or key_name]
        builder = (
            x509.CertificateBuilder()
            .subject_name(self._name(cn))
            .issuer_name(issuer.subject if issuer is not None else self._name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(not_after or self._not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    def pin(self, key_name: str) -> str:
        return spki_pin_of_key(self.keys[key_name].public_key())

    def chain(self, leaf_key: str = "primary", *, not_after: dt.datetime | None = None) -> Chain:
        """The host's publicly trusted chain, leaf on `leaf_key` (primary, backup, rotated);
        `not_after` gives the leaf another expiry (an expiring certificate)."""
        leaf = self._cert(
            self.host,
            leaf_key,
            self.intermediate,
            ca=False,
            issuer_key="intermediate",
            not_after=not_after,
        )
        return Chain((leaf, self.intermediate, self.public_root))

    def intercepted_chain(self) -> Chain:
        """What a TLS-inspecting proxy serves: a forged leaf under the private root."""
        leaf = self._cert(
            self.host, "proxy", self.private_root, ca=False, issuer_key="private_root"
        )
        return Chain((leaf, self.private_root))

    def public_roots_pem(self) -> bytes:
        return self.public_root.public_bytes(serialization.Encoding.PEM)


def _issuer_key_name(ca: CertificateAuthority, issuer: x509.Certificate | None) -> str | None:
    if issuer is None:
        return None
    if issuer is getattr(ca, "public_root", None):
        return "public_root"
    if issuer is getattr(ca, "private_root", None):
        return "private_root"
    return "intermediate"
