"""The publicly trusted roots that tell a rotation from an interception.

A served chain "ends in a public root" when its last certificate either *is* a bundle root (same
public key: roots are re-issued with new validity or encodings, so keys are compared, not bytes)
or was *issued by* one (servers usually omit the root itself), which is checked by the signature,
not only the issuer name, since a proxy can copy any name.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning


class RootsError(ValueError):
    pass


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@dataclass
class PublicRoots:
    keys: frozenset[bytes]  # DER SubjectPublicKeyInfo of every root
    by_subject: dict[bytes, list[x509.Certificate]] = field(default_factory=dict)

    @classmethod
    def from_pem(cls, data: bytes, source: str = "<memory>") -> PublicRoots:
        try:
            with warnings.catch_warnings():
                # certifi ships a few old roots with non-positive serials; they are still roots.
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise RootsError(f"{source}: not a PEM certificate bundle: {exc}") from exc
        by_subject: dict[bytes, list[x509.Certificate]] = {}
        for cert in certs:
            by_subject.setdefault(cert.subject.public_bytes(), []).append(cert)
        return cls(keys=frozenset(_spki(c) for c in certs), by_subject=by_subject)

    @classmethod
    def load(cls, path: Path | str) -> PublicRoots:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise RootsError(f"cannot read public roots bundle {path}: {exc.strerror}") from exc
        return cls.from_pem(data, source=str(path))

    def __len__(self) -> int:
        return len(self.keys)

    def ends_in_public_root(self, chain: list[x509.Certificate]) -> bool:
        """True when the chain's last certificate is a bundle root or is signed by one. A chain
        comes from a client: what cannot be read (a key or signature algorithm unknown to
        `cryptography`, a malformed issuer name) is not proven public."""
        if not chain:
            return False
        last = chain[-1]
        try:
            return _spki(last) in self.keys or self.issuer_of(last) is not None
        except (ValueError, TypeError, UnsupportedAlgorithm):  # a key nobody can read
            return False

    def issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        """The bundle root that signed `cert` (by signature, not only by name), or None."""
        for root in self.by_subject.get(cert.issuer.public_bytes(), ()):
            try:
                cert.verify_directly_issued_by(root)
                return root
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
        return None
