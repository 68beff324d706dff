"""pinwatch's native batch (`POST /v1/reports`): one app, one device, many reports.

The msgspec Structs below are the one definition of the wire format: they validate every batch
(in C, with the limits from settings) and they are the JSON schema the OpenAPI document shows.
They replaced pydantic models, which cost most of a 50-report batch's time
(benchmarks/bench_ingest.py). What msgspec cannot check in C is checked after decoding: pins
against `PIN_PATTERN`, certificates by loading them and hashing their keys (a certificate whose
key cannot be hashed pins nothing, and the consumer would fail on it).
Every violation becomes a `BadReport` naming the field as a path into the body, e.g.
`reports[3].observed_pins[0]`; a limit exceeded answers 413, anything else 400.
"""

# No `from __future__ import annotations`: the Structs are defined inside a function and msgspec
# must see their (local) annotation types as objects.

import base64
import binascii
import dataclasses
import datetime as dt
import re
from functools import lru_cache
from typing import Annotated, Any

import msgspec
from cryptography import x509
from msgspec import Meta, Struct

from ingest.formats import register
from ingest.formats.base import BadReport, FormatSpec, IngestContext, NotJson, Parsed
from ingest.formats.pem import UNUSABLE_KEY, key_pin
from pinwatch.record import SCHEMA_VERSION, Record
from pinwatch.settings import Settings
from pinwatch.vocabulary import ErrorCategory, Format, Kind, Result, platform_label

_RECORD_FIELDS = (
    "id", "kind", "format", "app_id", "host", "received_at_ms", "event_at_ms", "sent_at_ms",
    "app_version", "platform", "os_version", "device", "network", "client_network", "port",
    "count", "result", "enforced", "observed_pins", "known_pins", "served_chain", "error",
    "detail", "raw", "schema",
)  # fmt: skip
if tuple(f.name for f in dataclasses.fields(Record)) != _RECORD_FIELDS:
    raise ImportError("pinwatch.record.Record changed its fields: update ingest/formats/native.py")

# The base64 of 32 bytes: 42 characters, one whose low two bits are zero, one '='. The
# pinwatch.policy.is_spki_pin test (tests/unit/ingest/test_native.py checks they agree),
# restricted to canonical base64.
PIN_PATTERN = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
PIN_PROBLEM = "must be the base64 SHA-256 of a SubjectPublicKeyInfo (32 bytes, 44 characters)"
_PIN = re.compile(PIN_PATTERN)
# Clients report the same few pins over and over: remember good ones instead of matching each
# (bounded: cleared when full).
_GOOD_PINS: set[str] = set()
_MAX_GOOD_PINS = 65_536
_ENUM_CHOICES = {
    "result": ", ".join(r.value for r in Result),
    "error": ", ".join(e.value for e in ErrorCategory),
}


@lru_cache(maxsize=8)
def native_types(
    max_reports: int,
    max_pins: int,
    max_certs: int,
    max_cert_bytes: int,
    max_str: int,
    max_count: int,
) -> type[Struct]:
    """The batch type for one set of limits (tests and apps with other settings get theirs)."""

    def text(description: str | None = None, min_length: int = 0) -> Any:
        return Annotated[
            str, Meta(min_length=min_length, max_length=max_str, description=description)
        ]

    # checked by pattern after decoding (msgspec runs patterns through Python's re, per value)
    Pin = Annotated[str, Meta(extra_json_schema={"pattern": PIN_PATTERN})]
    Cert = Annotated[
        str,
        Meta(
            max_length=(max_cert_bytes + 2) // 3 * 4,  # base64 of max_cert_bytes
            description=f"base64 DER X.509 certificate, at most {max_cert_bytes} bytes",
        ),
    ]
    Port = Annotated[int, Meta(ge=1, le=65535)]
    Count = Annotated[int, Meta(ge=1, le=max_count)]
    At = Annotated[dt.datetime | None, Meta(description="When it happened (client clock).")]
    Enforced = Annotated[
        bool | None,
        Meta(description="false in report-only builds; absent: the host's policy phase."),
    ]
    Pins = Annotated[list[Pin], Meta(max_length=max_pins, description="SPKI pins, leaf first.")]
    Chain = Annotated[list[Cert], Meta(max_length=max_certs, description="Leaf first.")]
    Id = text(min_length=1)

    class AppInfo(Struct, frozen=True):
        id: text("App id; must be the app the ingest key belongs to.", min_length=1)
        version: text() = ""
        platform: text("ios, android, tvos, watchos, macos, web, other.") = ""
        os_version: text() = ""

    class DeviceInfo(Struct, frozen=True):
        id: text("Opaque install id; stored only as a keyed hash.") = ""
        network: text("wifi, cellular, ethernet, ...") = ""

    class PinValidation(Struct, frozen=True, tag_field="type", tag="pin_validation"):
        id: text("Unique report id; a retried report keeps its id.", min_length=1)
        host: Id
        result: Result
        at: At = None
        port: Port = 443
        enforced: Enforced = None
        observed_pins: Pins = []
        known_pins: Pins = []
        served_chain: Chain = []
        count: Count = 1

    class NetworkError(Struct, frozen=True, tag_field="type", tag="network_error"):
        id: Id
        host: Id
        error: ErrorCategory
        at: At = None
        port: Port = 443
        detail: text() = ""
        count: Count = 1

    Reports = Annotated[
        list[PinValidation | NetworkError], Meta(min_length=1, max_length=max_reports)
    ]

    class NativeBatch(Struct, frozen=True):
        """One app on one device sends many reports at once."""

        app: AppInfo
        reports: Reports
        device: DeviceInfo = DeviceInfo()
        sent_at: dt.datetime | None = None

    return NativeBatch


def _limits(settings: Settings) -> tuple[int, ...]:
    return (
        settings.max_reports_per_batch,
        settings.max_pins_per_report,
        settings.max_chain_certificates,
        settings.max_certificate_bytes,
        settings.max_string_length,
        settings.max_report_count,
    )


def types_for(settings: Settings) -> type[Struct]:
    return native_types(*_limits(settings))


@lru_cache(maxsize=8)
def _decoder(limits: tuple[int, ...]) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(native_types(*limits))


def decode_native(body: bytes, settings: Settings) -> Any:
    """The body straight into the batch Struct: JSON parsing and validation in one pass in C."""
    try:
        return _decoder(_limits(settings)).decode(body)
    except msgspec.ValidationError as exc:
        raise bad_report(exc) from None
    except msgspec.DecodeError as exc:
        raise NotJson(str(exc)) from None


def request_schema(settings: Settings) -> tuple[str, dict[str, Any]]:
    """(name of the batch schema, every component schema it refers to) for OpenAPI."""
    batch = types_for(settings)
    _, components = msgspec.json.schema_components(
        (batch,), ref_template="#/components/schemas/{name}"
    )
    return batch.__name__, components


def bad_report(exc: msgspec.ValidationError) -> BadReport:
    """msgspec says e.g. "Expected `int` >= 1, got `0` - at `$.reports[1].count`"."""
    message, _, where = str(exc).partition(" - at `$")
    path = where.rstrip("`").lstrip(".")
    missing = re.fullmatch(r"Object missing required field `(\w+)`", message)
    if missing:
        name = missing.group(1)
        path = f"{path}.{name}" if path else name
        message = "required"
        if name == "type":
            message = "missing report type; expected pin_validation or network_error"
    elif path.endswith(".type") and message.startswith("Invalid value"):
        sent = message.removeprefix("Invalid value ")
        message = f"unknown report type {sent}; expected pin_validation or network_error"
    elif message.startswith("Invalid enum value"):
        name = path.rsplit(".", 1)[-1]
        if name in _ENUM_CHOICES:
            message += f"; expected one of {_ENUM_CHOICES[name]}"
    status = 413 if "of length <=" in message else 400
    return BadReport(path or "body", message, status=status)


def _check_pins(pins: list[str], where: str) -> None:
    for i, pin in enumerate(pins):
        if pin not in _GOOD_PINS:
            if not _PIN.match(pin):
                raise BadReport(f"{where}[{i}]", PIN_PROBLEM)
            if len(_GOOD_PINS) >= _MAX_GOOD_PINS:
                _GOOD_PINS.clear()
            _GOOD_PINS.add(pin)


def _check_certificates(chain: list[str], where: str, max_bytes: int) -> None:
    for i, value in enumerate(chain):
        problem = _certificate_problem(value, max_bytes)
        if problem is not None:
            raise BadReport(f"{where}[{i}]", *problem)


# Chains repeat (one per server key and CDN edge): remember the verdict on recent certificates.
@lru_cache(maxsize=4096)
def _certificate_problem(value: str, max_bytes: int) -> tuple[str, int] | None:
    """(problem, HTTP status) for a base64 DER certificate that is not one, else None."""
    try:
        der = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "must be base64 (DER certificate)", 400
    if len(der) > max_bytes:
        return f"certificate larger than {max_bytes} bytes", 413
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return "is not a DER-encoded X.509 certificate", 400
    if key_pin(cert) is None:
        return UNUSABLE_KEY, 400
    return None


def _ms(value: dt.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # clients without a zone mean UTC
    return int(value.timestamp() * 1000)


def parse_native(batch: Any, ctx: IngestContext) -> Parsed:
    """Records of a batch `decode_native` made; pins and certificates are checked here."""
    settings = ctx.settings
    if batch.app.id != ctx.app_id:
        raise BadReport("app.id", f"{batch.app.id!r} is not the app this ingest key belongs to")
    platform = platform_label(batch.app.platform)
    app_id, received, sent = ctx.app_id, ctx.received_at_ms, _ms(batch.sent_at)
    version, os_version = batch.app.version, batch.app.os_version
    device, network = ctx.hash_device(batch.device.id), batch.device.network
    client_network = ctx.client_network
    records = []
    for i, report in enumerate(batch.reports):
        host = report.host.strip().lower().rstrip(".")
        at = _ms(report.at) if report.at is not None else None
        # Positional (order checked at import, see _RECORD_FIELDS): binding 25 keyword
        # arguments took ten times longer, the largest cost of a 50-report batch.
        if report.__struct_config__.tag == "pin_validation":
            if report.observed_pins:
                _check_pins(report.observed_pins, f"reports[{i}].observed_pins")
            if report.known_pins:
                _check_pins(report.known_pins, f"reports[{i}].known_pins")
            if report.served_chain:
                where = f"reports[{i}].served_chain"
                _check_certificates(report.served_chain, where, settings.max_certificate_bytes)
            records.append(
                Record(
                    report.id, Kind.PIN_VALIDATION, Format.NATIVE, app_id, host, received, at,
                    sent, version, platform, os_version, device, network, client_network,
                    report.port, report.count, report.result, report.enforced,
                    report.observed_pins, report.known_pins, report.served_chain,
                    None, "", "", SCHEMA_VERSION,
                )
            )  # fmt: skip
        else:
            records.append(
                Record(
                    report.id, Kind.NETWORK_ERROR, Format.NATIVE, app_id, host, received, at,
                    sent, version, platform, os_version, device, network, client_network,
                    report.port, report.count, None, None, [], [], [],
                    report.error, report.detail, "", SCHEMA_VERSION,
                )
            )  # fmt: skip
    return Parsed(records)


NATIVE = register(
    FormatSpec(
        name=Format.NATIVE.value,
        path="/v1/reports",
        content_types=("application/json",),
        parse=parse_native,
        decode=decode_native,
        request_schema=request_schema,
        summary="Native batch: one app and device, many pin-validation and network-error reports",
    )
)
