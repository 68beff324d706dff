"""Log entries (RFC 6962 3.4): the MerkleTreeLeaf in `leaf_input` (covered by the tree hash,
so what is judged comes from it) and the chain in `extra_data` (not covered: an issuer from it
counts only when its signature on the certificate verifies).

A precertificate's leaf holds a bare TBSCertificate, which no X.509 parser loads; it is wrapped
into a Certificate structure with an empty signature, enough to read names, key and validity.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from pinwatch.pins import spki_pin
from prober.ct.tls import Reader, Truncated
from prober.describe import certificate_names

X509_ENTRY, PRECERT_ENTRY = 0, 1


class BadEntry(ValueError):
    pass


@dataclass(frozen=True)
class LoggedCertificate:
    index: int
    kind: str  # certificate or precertificate
    timestamp_ms: int
    names: tuple[str, ...]  # CN and SAN DNS names, lowercase
    pin: str  # the leaf's SPKI pin
    issuer_pins: tuple[str, ...]  # SPKI pins of issuers proven by signature (or by the leaf)
    not_before: dt.datetime
    not_after: dt.datetime


def parse_entry(index: int, leaf_input: bytes, extra_data: bytes) -> LoggedCertificate:
    """Raises Truncated or BadEntry naming the entry and what is wrong."""
    r = Reader(leaf_input, f"entry {index}'s leaf_input")
    version, leaf_type = r.uint(1, "version"), r.uint(1, "leaf_type")
    if version != 0 or leaf_type != 0:
        raise BadEntry(f"entry {index}: unknown leaf version {version} or type {leaf_type}")
    timestamp = r.uint(8, "timestamp")
    entry_type = r.uint(2, "entry_type")
    if entry_type == X509_ENTRY:
        der = r.vector(3, "the certificate")
        r.vector(2, "the extensions")
        cert = _load(index, der, "certificate")
        issuers = _proven_issuers(cert, _chain(index, extra_data, precert=False))
        kind = "certificate"
    elif entry_type == PRECERT_ENTRY:
        issuer_key_hash = r.take(32, "issuer_key_hash")
        tbs = r.vector(3, "the TBSCertificate")
        r.vector(2, "the extensions")
        cert = _load(index, _wrap_tbs(index, tbs), "precertificate")
        # The hash of the issuer's SubjectPublicKeyInfo is an SPKI pin already, and it is in
        # the leaf: no signature to check.
        issuers = [base64.b64encode(issuer_key_hash).decode("ascii")]
        kind = "precertificate"
    else:
        raise BadEntry(f"entry {index}: unknown entry type {entry_type}")
    if not r.done:
        raise BadEntry(f"entry {index}: {len(leaf_input) - r.pos} bytes after the leaf")
    return LoggedCertificate(
        index=index,
        kind=kind,
        timestamp_ms=timestamp,
        names=tuple(certificate_names(cert)),
        pin=spki_pin(cert),
        issuer_pins=tuple(issuers),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def _load(index: int, der: bytes, what: str) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.public_key()  # parse errors of the key surface here, not later
        return cert
    except ValueError as exc:
        raise BadEntry(f"entry {index}: the {what} does not parse: {exc}") from None


def _chain(index: int, extra_data: bytes, *, precert: bool) -> list[x509.Certificate]:
    """Issuers from extra_data; unreadable ones are left out (they only add pins)."""
    try:
        r = Reader(extra_data, f"entry {index}'s extra_data")
        if precert:
            r.vector(3, "the precertificate")
        chain = Reader(r.vector(3, "the chain"), f"entry {index}'s chain")
        ders = []
        while not chain.done:
            ders.append(chain.vector(3, "a chain certificate"))
    except Truncated:
        return []
    certs = []
    for der in ders:
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    return certs


def _proven_issuers(cert: x509.Certificate, chain: list[x509.Certificate]) -> list[str]:
    """Pins of the chain's certificates, up from the leaf, as far as each one's signature on
    the one below verifies."""
    pins = []
    child = cert
    for issuer in chain:
        try:
            child.verify_directly_issued_by(issuer)
        except Exception:  # noqa: BLE001 - any failure ends the proven part of the chain
            break
        pins.append(spki_pin(issuer))
        child = issuer
    return pins


def _der_header(data: bytes, pos: int, what: str) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `pos`."""
    if pos + 2 > len(data):
        raise Truncated(f"{what} ends inside a DER header")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise BadEntry(f"{what}: bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise Truncated(f"{what} ends inside a DER element ({length} bytes announced)")
    return tag, pos, pos + length


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _wrap_tbs(index: int, tbs: bytes) -> bytes:
    """Certificate ::= SEQUENCE { tbs, signatureAlgorithm (the TBS's own), BIT STRING (empty) }"""
    what = f"entry {index}'s TBSCertificate"
    tag, start, end = _der_header(tbs, 0, what)
    if tag != 0x30 or end != len(tbs):
        raise BadEntry(f"{what} is not one DER SEQUENCE")
    pos = start
    tag, _, elem_end = _der_header(tbs, pos, what)
    if tag == 0xA0:  # [0] version
        pos = elem_end
        tag, _, elem_end = _der_header(tbs, pos, what)
    pos = elem_end  # serialNumber
    tag, alg_start, alg_end = _der_header(tbs, pos, what)
    if tag != 0x30:
        raise BadEntry(f"{what} has no signature AlgorithmIdentifier")
    algorithm = tbs[pos:alg_end]
    signature = b"\x03\x01\x00"
    body = tbs + algorithm + signature
    return b"\x30" + _der_length(len(body)) + body
