"""Certificate chains and pin lists as HPKP-family reports carry them.

Chains arrive as arrays of PEM strings. TrustKit iOS wraps base64 at 64 columns with `\\r\\n`
inside a `\\n`-separated armor (NSData's 64-character line option); TrustKit-Android wraps at 76
with `\\n` and ends with a newline (android.util.Base64.DEFAULT); Chrome's HPKP reporter used
64-column `\\n`. All of them are read the same way: armor, base64, any whitespace, then the DER
must parse as X.509, because the pin pinwatch computes is only as good as the certificate.

Known pins are HPKP directives, `pin-sha256="<base64>"`. RFC 7469 shows them with single quotes
too, so the quote may be either (or absent); the value must be a base64 SHA-256 digest.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from ingest.formats.base import BadReport
from pinwatch.pins import spki_pin
from pinwatch.policy import is_spki_pin

_ARMOR = re.compile(
    r"^\s*-----BEGIN CERTIFICATE-----(?P<body>[A-Za-z0-9+/=\s]*)-----END CERTIFICATE-----\s*$"
)
UNUSABLE_KEY = "not an X.509 certificate with a usable public key"
_PIN = re.compile(r"""^\s*pin-sha256\s*=\s*(?P<q>["']?)(?P<value>[^"']*)(?P=q)\s*$""", re.I)


@dataclass(frozen=True)
class ParsedCert:
    der: bytes
    pin: str  # base64 SHA-256 of the SubjectPublicKeyInfo

    @property
    def b64(self) -> str:
        return base64.b64encode(self.der).decode("ascii")


def parse_chain(values: list[Any], field: str, *, max_cert_bytes: int) -> list[ParsedCert]:
    """Certificates in the order sent (leaf first in every client). The caller has already
    bounded the number of entries."""
    chain = []
    for i, value in enumerate(values):
        where = f"{field}[{i}]"
        if not isinstance(value, str):
            raise BadReport(where, "must be a PEM certificate string")
        if len(value) > max_cert_bytes:
            raise BadReport(where, f"{len(value)} bytes, at most {max_cert_bytes}", 413)
        parsed = _parse_pem(value)
        if isinstance(parsed, str):
            raise BadReport(where, parsed)
        chain.append(parsed)
    return chain


# The same few chains (one per server key and CDN edge) arrive over and over, and parsing a
# certificate and hashing its key is most of a report's cost: remember recent ones.
@lru_cache(maxsize=2048)
def _parse_pem(text: str) -> ParsedCert | str:
    """The certificate, or what is wrong with the text."""
    match = _ARMOR.match(text)
    if match is None:
        return "not a PEM certificate (BEGIN/END CERTIFICATE armor)"
    body = "".join(match["body"].split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return "PEM body is not valid base64"
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return UNUSABLE_KEY
    pin = key_pin(cert)
    return UNUSABLE_KEY if pin is None else ParsedCert(der, pin)


def key_pin(cert: x509.Certificate) -> str | None:
    """The certificate's SPKI pin, or None when its key cannot be loaded (an unknown algorithm,
    an EC point off the curve): such a key pins nothing, and the consumer's classifier would
    fail on it, so ingest refuses the certificate (cryptography parses the key lazily)."""
    try:
        return spki_pin(cert)
    except (ValueError, UnsupportedAlgorithm):
        return None


def parse_known_pins(values: list[Any], field: str) -> list[str]:
    """Pin values in the order sent, duplicates dropped."""
    pins: list[str] = []
    for i, value in enumerate(values):
        where = f"{field}[{i}]"
        if not isinstance(value, str):
            raise BadReport(where, 'must be a string like pin-sha256="<base64>"')
        match = _PIN.match(value)
        if match is None:
            raise BadReport(where, f'not a pin-sha256="<base64>" directive: {value[:64]!r}')
        pin = match["value"].strip()
        if not is_spki_pin(pin):
            raise BadReport(where, "pin is not the base64 of a SHA-256 digest (32 bytes)")
        if pin not in pins:
            pins.append(pin)
    return pins
