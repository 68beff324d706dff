"""SPKI pins: the SHA-256 of a certificate's DER SubjectPublicKeyInfo, base64, as HPKP,
TrustKit and every pinning library compute them."""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def spki_pin_of_key(public_key: object) -> str:
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def spki_pin(cert: x509.Certificate) -> str:
    return spki_pin_of_key(cert.public_key())


def spki_pin_of_der(der: bytes) -> str:
    """Raises ValueError when `der` is not an X.509 certificate."""
    return spki_pin(x509.load_der_x509_certificate(der))
