"""Sample payloads shared by every test, built from real certificates (devstack.certs).

One module so that ingest, consumer, alert and dashboard tests all send the same realistic
reports. Builders return plain dicts (the JSON a client would POST), except `kafka_record`: the
normalized Record ingest puts on Kafka, for consumer tests that skip ingest.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devstack.certs import CertificateAuthority, Chain
from pinwatch.record import Record
from pinwatch.vocabulary import Format, Kind, Result


def iso(ts: dt.datetime | None = None) -> str:
    ts = ts or dt.datetime.now(dt.UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def pin_validation(
    host: str,
    chain: Chain | None,
    *,
    result: str = "ok",
    enforced: bool | None = True,
    count: int = 1,
    with_chain: bool = True,
    report_id: str | None = None,
    observed_pins: list[str] | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "id": report_id or str(uuid.uuid4()),
        "type": "pin_validation",
        "at": iso(),
        "host": host,
        "port": 443,
        "result": result,
        "count": count,
        "observed_pins": observed_pins
        if observed_pins is not None
        else (chain.pins if chain else []),
    }
    if enforced is not None:
        report["enforced"] = enforced
    if chain is not None and with_chain:
        report["served_chain"] = chain.b64
    return report


def network_error(
    host: str, error: str = "timeout", *, count: int = 1, detail: str = "NSURLErrorTimedOut"
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": "network_error",
        "at": iso(),
        "host": host,
        "error": error,
        "detail": detail,
        "count": count,
    }


def native_batch(
    reports: list[dict[str, Any]],
    *,
    app: str,
    version: str = "5.2.0",
    platform: str = "ios",
    device: str | None = None,
    network: str = "wifi",
) -> dict[str, Any]:
    return {
        "app": {"id": app, "version": version, "platform": platform, "os_version": "18.1"},
        "device": {"id": device or f"device-{uuid.uuid4()}", "network": network},
        "sent_at": iso(),
        "reports": reports,
    }


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


# --- client formats: TrustKit iOS / Android, HPKP, NEL --------------------------------------
# Each builder writes the JSON exactly as the client's source writes it (see ingest/formats/).


def _b64_lines(der: bytes, width: int) -> list[str]:
    import base64

    text = base64.b64encode(der).decode("ascii")
    return [text[i : i + width] for i in range(0, len(text), width)]


def pem_ios(der: bytes) -> str:
    """TrustKit iOS: NSData base64 at 64 columns (CRLF between lines) in `\\n` armor."""
    body = "\r\n".join(_b64_lines(der, 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----"


def pem_android(der: bytes) -> str:
    """TrustKit-Android: android.util.Base64.DEFAULT (76 columns, `\\n`, trailing newline)."""
    body = "".join(line + "\n" for line in _b64_lines(der, 76))
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def pem_openssl(der: bytes) -> str:
    """64 columns, `\\n`: what Chrome's HPKP reporter (and OpenSSL) wrote."""
    body = "".join(line + "\n" for line in _b64_lines(der, 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def hpkp_pin(pin: str, quote: str = '"') -> str:
    return f"pin-sha256={quote}{pin}{quote}"


def trustkit_ios(
    host: str,
    chain: Chain,
    *,
    known_pins: list[str],
    validation_result: int = 1,
    enforce_pinning: bool | None = True,
    bundle_id: str = "com.example.pinned",
    app_version: str = "5.2.0",
    platform: str = "IOS",
    platform_version: str = "18.1.0",
    vendor_id: str | None = None,
    at: dt.datetime | None = None,
    noted_hostname: str | None = None,
) -> dict[str, Any]:
    """TSKPinFailureReport.json: UTC `date-time` to the second, `port` 0, no served chain.
    `enforce_pinning=None` builds an early-TrustKit report, which had no enforce-pinning."""
    ts = at or dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "app-bundle-id": bundle_id,
        "app-version": app_version,
        "app-platform": platform,
        "app-platform-version": platform_version,
        "app-vendor-id": vendor_id or str(uuid.uuid4()).upper(),
        "trustkit-version": "3.0.3",
        "date-time": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": host,
        "port": 0,
        "noted-hostname": noted_hostname or host,
        "include-subdomains": noted_hostname is not None,
        "enforce-pinning": enforce_pinning,
        "validated-certificate-chain": [pem_ios(der) for der in chain.der],
        "known-pins": [hpkp_pin(p) for p in known_pins],
        "validation-result": validation_result,
        "known-pins-expiration-date": "2027-01-01",
    }
    if enforce_pinning is None:
        del report["enforce-pinning"]
    return report


def trustkit_android(
    host: str,
    chain: Chain,
    *,
    known_pins: list[str],
    validation_result: int = 1,
    enforce_pinning: bool = True,
    package: str = "com.example.pinned",
    app_version: str = "5.2.0",
    vendor_id: str | None = None,
    local_time: dt.datetime | None = None,
    served_chain: Chain | None = None,
) -> dict[str, Any]:
    """PinningFailureReport.toJson: device-local `date-time` with a literal Z, `port` 0,
    served and validated chains, no OS version."""
    ts = local_time or dt.datetime.now()
    return {
        "app-bundle-id": package,
        "app-version": app_version,
        "app-vendor-id": vendor_id or str(uuid.uuid4()),
        "app-platform": "ANDROID",
        "trustkit-version": "1.1.5",
        "hostname": host,
        "port": 0,
        "noted-hostname": host,
        "include-subdomains": False,
        "enforce-pinning": enforce_pinning,
        "validation-result": validation_result,
        "date-time": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "validated-certificate-chain": [pem_android(der) for der in chain.der],
        "served-certificate-chain": [pem_android(der) for der in (served_chain or chain).der],
        "known-pins": [hpkp_pin(p) for p in known_pins],
    }


def hpkp_report(
    host: str,
    chain: Chain,
    *,
    known_pins: list[str],
    port: int = 443,
    quote: str = '"',
    served_chain: Chain | None = None,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """RFC 7469 section 3, as Chrome sent it (millisecond date-times, 64-column PEM)."""
    return {
        "date-time": iso(at),
        "hostname": host,
        "port": port,
        "effective-expiration-date": iso(dt.datetime(2027, 1, 1, tzinfo=dt.UTC)),
        "include-subdomains": False,
        "noted-hostname": host,
        "served-certificate-chain": [pem_openssl(d) for d in (served_chain or chain).der],
        "validated-certificate-chain": [pem_openssl(d) for d in chain.der],
        "known-pins": [hpkp_pin(p, quote) for p in known_pins],
    }


CHROME_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def nel_report(
    url: str,
    error_type: str,
    *,
    age_ms: int = 1200,
    phase: str | None = None,
    sampling_fraction: float = 1.0,
    status_code: int = 0,
    elapsed_time: int = 143,
    server_ip: str = "203.0.113.10",
) -> dict[str, Any]:
    """One Reporting API report of type network-error, as Chrome serializes it."""
    if phase is None:
        prefix = error_type.split(".", 1)[0]
        phase = {"dns": "dns", "tcp": "connection", "tls": "connection"}.get(prefix, "application")
    return {
        "age": age_ms,
        "type": "network-error",
        "url": url,
        "user_agent": CHROME_UA,
        "body": {
            "elapsed_time": elapsed_time,
            "method": "GET",
            "phase": phase,
            "protocol": "h2",
            "referrer": "",
            "sampling_fraction": sampling_fraction,
            "server_ip": server_ip,
            "status_code": status_code,
            "type": error_type,
        },
    }


def trustkit_json(report: dict[str, Any]) -> bytes:
    """The bytes TrustKit uploads: NSJSONSerialization (iOS) and org.json (Android) both write
    `/` as `\\/`, which is all over base64 certificates and URLs."""
    import orjson

    # a `/` only ever occurs inside JSON strings, so escaping every one is exact
    return orjson.dumps(report).replace(b"/", b"\\/")


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
    from tests.support.names import TEST_APP, TEST_HOST

    return native_batch(
        [pin_validation(TEST_HOST, ca.chain("primary"), result="ok", count=count)],
        app=TEST_APP,
        device=device,
    )


def failing_batch(chain: Chain, device: str, count: int = VALIDATIONS_PER_BATCH) -> dict[str, Any]:
    """A device whose enforced validations of TEST_HOST fail against `chain`."""
    from tests.support.names import TEST_APP, TEST_HOST

    return native_batch(
        [pin_validation(TEST_HOST, chain, result="pin_mismatch", enforced=True, count=count)],
        app=TEST_APP,
        device=device,
    )
