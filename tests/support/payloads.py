"""Test-only payloads: a Record as ingest puts it on Kafka, and certificates that parse but whose
key cannot be used. What clients send is devstack/clients.py (the simulator's builders too)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devstack.certs import CertificateAuthority, Chain
from devstack.clients import native_batch, pin_validation
from pinwatch.record import Record
from pinwatch.vocabulary import Format, Kind, Result
from tests.support.names import TEST_APP, TEST_HOST


def kafka_record(*, app_id: str, host: str, **overrides: Any) -> Record:
    """A native pin-mismatch Record received now, as ingest produces it; `overrides` set any
    other Record field (kind, result, served_chain, enforced, ...)."""
    values: dict[str, Any] = dict(
        id=str(uuid.uuid4()),
        kind=Kind.PIN_VALIDATION,
        format=Format.NATIVE,
        app_id=app_id,
        host=host,
        received_at_ms=int(time.time() * 1000),
        result=Result.PIN_MISMATCH,
    )
    values.update(overrides)
    return Record(**values)


# --- certificates that parse as X.509 but whose public key cannot be used -------------------

# DER of the OID id-ecPublicKey (1.2.840.10045.2.1) and of an unassigned sibling (...2.9).
EC_PUBLIC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")
UNKNOWN_KEY_OID = bytes.fromhex("06072a8648ce3d0209")


def unusable_key_certificates(leaf: x509.Certificate) -> dict[str, bytes]:
    """DER variants of a real P-256 leaf that still parse as certificates (same lengths, so
    every ASN.1 header stays right) but whose SubjectPublicKeyInfo cannot be loaded: the key
    algorithm OID changed to an unknown one, and the EC point moved off the curve. Their
    signatures no longer verify, which is what a client sending junk would not care about."""
    der = leaf.public_bytes(serialization.Encoding.DER)
    point = leaf.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert der.count(EC_PUBLIC_KEY_OID) == 1 and der.count(point) == 1, "not a P-256 leaf"
    off_curve = point[:-1] + bytes([point[-1] ^ 0x01])  # y+-1 of a point on P-256 is not on it
    return {
        "unknown_key_algorithm": der.replace(EC_PUBLIC_KEY_OID, UNKNOWN_KEY_OID),
        "point_off_curve": der.replace(point, off_curve),
    }


# --- traffic for the alert tests: one device's batch of validations of TEST_HOST ---------------

# Validations one device reports per batch (clients aggregate with `count`).
VALIDATIONS_PER_BATCH = 20


def ok_batch(
    ca: CertificateAuthority, device: str, count: int = VALIDATIONS_PER_BATCH
) -> dict[str, Any]:
    """Normal traffic: a device whose validations against the pinned primary key pass."""
    return native_batch(
        [pin_validation(TEST_HOST, ca.chain("primary"), result="ok", count=count)],
        app=TEST_APP,
        device=device,
    )


def failing_batch(chain: Chain, device: str, count: int = VALIDATIONS_PER_BATCH) -> dict[str, Any]:
    """A device whose enforced validations of TEST_HOST fail against `chain`."""
    return native_batch(
        [pin_validation(TEST_HOST, chain, result="pin_mismatch", enforced=True, count=count)],
        app=TEST_APP,
        device=device,
    )
