"""Sampled evidence chains made readable for a review: who each certificate names, who issued
it, how long it is valid, and whether the chain ends in a publicly trusted root."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509

from consumers.classify import BAD_CERTIFICATE
from pinwatch.pins import spki_pin
from pinwatch.roots import PublicRoots


@dataclass(frozen=True)
class CertSummary:
    subject: str
    issuer: str
    not_before: str
    not_after: str
    pin: str


@dataclass(frozen=True)
class EvidenceChain:
    received_at: str
    app_version: str
    platform: str
    client_network: str
    cause: str
    root: str  # public | private | unknown (no chain was sent, only pins)
    observed_pins: list[str]
    certificates: list[CertSummary] = field(default_factory=list)


@lru_cache(maxsize=4)
def load_public_roots(path: Path) -> PublicRoots:
    """The bundle parsed once per process (it is read on every answer with a surprise pin)."""
    return PublicRoots.load(path)


def _when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _summary(cert: x509.Certificate) -> CertSummary:
    return CertSummary(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=_when(cert.not_valid_before_utc),
        not_after=_when(cert.not_valid_after_utc),
        pin=spki_pin(cert),
    )


def describe(row: dict[str, Any], roots: PublicRoots) -> EvidenceChain:
    """One evidence row (consumers.schema EVIDENCE_COLUMNS) as a reviewable chain."""
    certs: list[x509.Certificate] = []
    summaries: list[CertSummary] = []
    for item in row.get("served_chain") or []:
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(item))
            summaries.append(_summary(cert))
        except (binascii.Error, *BAD_CERTIFICATE):
            break  # stored evidence is what a client sent; show what reads, stop at the rest
        certs.append(cert)
    received = row["received_at"]
    if isinstance(received, dt.datetime):
        received = _when(received if received.tzinfo else received.replace(tzinfo=dt.UTC))
    return EvidenceChain(
        received_at=str(received),
        app_version=row.get("app_version", ""),
        platform=row.get("platform", ""),
        client_network=row.get("client_network", ""),
        cause=row.get("cause", ""),
        root=("public" if roots.ends_in_public_root(certs) else "private") if certs else "unknown",
        observed_pins=list(row.get("observed_pins") or []),
        certificates=summaries,
    )
