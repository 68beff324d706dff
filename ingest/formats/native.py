"""pinwatch's native batch (`POST /v1/reports`): one app, one device, many reports.

The pydantic models are the documentation of the wire format (they feed the OpenAPI document)
and the validation. Limits come from settings, so the models are built per limit set and cached.
Every violation becomes a `BadReport` naming the field as a path into the body, e.g.
`reports[3].observed_pins[0]`; a limit exceeded answers 413, anything else 400.
"""

# No `from __future__ import annotations`: the models are defined inside a function and pydantic
# must see their (local) annotation types as objects.

import base64
import binascii
import dataclasses
import datetime as dt
from functools import lru_cache
from typing import Annotated, Any, Literal

from cryptography import x509
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from ingest.formats import register
from ingest.formats.base import BadReport, FormatSpec, IngestContext, Parsed
from pinwatch.record import SCHEMA_VERSION, ErrorCategory, Format, Kind, Record, Result
from pinwatch.settings import Settings

PLATFORMS = frozenset({"ios", "android", "tvos", "watchos", "macos", "web", "other"})
# pydantic error types that mean "a limit was exceeded" (answered 413, not 400)
_RECORD_FIELDS = (
    "id", "kind", "format", "app_id", "host", "received_at_ms", "event_at_ms", "sent_at_ms",
    "app_version", "platform", "os_version", "device", "network", "client_network", "port",
    "count", "result", "enforced", "observed_pins", "known_pins", "served_chain", "error",
    "detail", "raw", "schema",
)  # fmt: skip
if tuple(f.name for f in dataclasses.fields(Record)) != _RECORD_FIELDS:
    raise ImportError("pinwatch.record.Record changed its fields: update ingest/formats/native.py")
_KINDS = frozenset(k.value for k in Kind)
_LIMIT_ERRORS = frozenset({"too_long", "string_too_long", "certificate_too_large"})


# The base64 of 32 bytes: 42 characters, one whose low two bits are zero, one '='. The
# pinwatch.policy.is_spki_pin test (tests/test_ingest_native.py checks they agree), restricted to
# canonical base64, as a pattern pydantic runs in Rust: decoding every pin in Python was half of
# the parse time of a 50-report batch.
PIN_PATTERN = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
PIN_PROBLEM = "must be the base64 SHA-256 of a SubjectPublicKeyInfo (32 bytes, 44 characters)"


def _certificate_checker(max_bytes: int):  # noqa: ANN202 - a pydantic validator
    def check(value: str) -> str:
        # base64 of max_bytes is at most 4/3 as long: refuse before decoding anything bigger
        if len(value) > (max_bytes + 2) // 3 * 4:
            raise PydanticCustomError(
                "certificate_too_large",
                "certificate larger than {limit} bytes",
                {"limit": max_bytes},
            )
        try:
            der = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise PydanticCustomError(
                "bad_certificate", "must be base64 (DER certificate)"
            ) from None
        if len(der) > max_bytes:
            raise PydanticCustomError(
                "certificate_too_large",
                "certificate larger than {limit} bytes",
                {"limit": max_bytes},
            )
        try:
            x509.load_der_x509_certificate(der)
        except ValueError:
            raise PydanticCustomError(
                "bad_certificate", "is not a DER-encoded X.509 certificate"
            ) from None
        return value

    return check


@lru_cache(maxsize=8)
def native_models(
    max_reports: int,
    max_pins: int,
    max_certs: int,
    max_cert_bytes: int,
    max_str: int,
    max_count: int,
) -> type[BaseModel]:
    """The batch model for one set of limits (tests and apps with other settings get theirs)."""
    Text = Annotated[StrictStr, Field(max_length=max_str)]
    Id = Annotated[StrictStr, Field(min_length=1, max_length=max_str)]
    Pin = Annotated[StrictStr, Field(pattern=PIN_PATTERN)]
    Cert = Annotated[StrictStr, AfterValidator(_certificate_checker(max_cert_bytes))]
    Port = Annotated[StrictInt, Field(ge=1, le=65535)]
    Count = Annotated[StrictInt, Field(ge=1, le=max_count)]

    class _Strict(BaseModel):
        model_config = ConfigDict(extra="ignore", frozen=True)

    class AppInfo(_Strict):
        id: Id = Field(description="App id; must be the app the ingest key belongs to.")
        version: Text = ""
        platform: Text = Field("", description="ios, android, tvos, watchos, macos, web, other.")
        os_version: Text = ""

    class DeviceInfo(_Strict):
        id: Text = Field("", description="Opaque install id; stored only as a keyed hash.")
        network: Text = Field("", description="wifi, cellular, ethernet, ...")

    class PinValidation(_Strict):
        id: Id = Field(description="Unique report id; a retried report keeps its id.")
        type: Literal["pin_validation"]
        at: dt.datetime | None = Field(None, description="When it happened (client clock).")
        host: Id
        port: Port = 443
        result: Result
        enforced: StrictBool | None = Field(
            None, description="false in report-only builds; absent: the host's policy phase."
        )
        observed_pins: list[Pin] = Field(
            default_factory=list, max_length=max_pins, description="SPKI pins, leaf first."
        )
        known_pins: list[Pin] = Field(default_factory=list, max_length=max_pins)
        served_chain: list[Cert] = Field(
            default_factory=list, max_length=max_certs, description="base64 DER, leaf first."
        )
        count: Count = 1

    class NetworkError(_Strict):
        id: Id
        type: Literal["network_error"]
        at: dt.datetime | None = None
        host: Id
        port: Port = 443
        error: ErrorCategory
        detail: Text = ""
        count: Count = 1

    Report = Annotated[PinValidation | NetworkError, Field(discriminator="type")]

    class NativeBatch(_Strict):
        """One app on one device sends many reports at once."""

        app: AppInfo
        device: DeviceInfo = DeviceInfo()
        sent_at: dt.datetime | None = None
        reports: list[Report] = Field(min_length=1, max_length=max_reports)

    return NativeBatch


def models_for(settings: Settings) -> type[BaseModel]:
    return native_models(
        settings.max_reports_per_batch,
        settings.max_pins_per_report,
        settings.max_chain_certificates,
        settings.max_certificate_bytes,
        settings.max_string_length,
        settings.max_report_count,
    )


def field_path(loc: tuple[Any, ...]) -> str:
    """('reports', 3, 'pin_validation', 'observed_pins', 0) -> 'reports[3].observed_pins[0]'."""
    out = ""
    previous: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in _KINDS:
            pass  # the discriminated union puts the tag into the location; readers want fields
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out


def bad_report(exc: ValidationError) -> BadReport:
    err = exc.errors(include_url=False)[0]
    path = field_path(tuple(err["loc"]))
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "union_tag_invalid":
        sent = err["input"].get("type") if isinstance(err["input"], dict) else None
        message = f"unknown report type {sent!r}; expected pin_validation or network_error"
        path = f"{path}.type" if path else "type"
    elif err["type"] == "union_tag_not_found":
        path = f"{path}.type" if path else "type"
        message = "missing report type; expected pin_validation or network_error"
    elif err["type"] == "string_pattern_mismatch":
        message = PIN_PROBLEM  # pins are the only pattern-checked fields
    status = 413 if err["type"] in _LIMIT_ERRORS else 400
    return BadReport(path or "body", message, status=status)


def _ms(value: dt.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # clients without a zone mean UTC
    return int(value.timestamp() * 1000)


def parse_native(document: Any, ctx: IngestContext) -> Parsed:
    if not isinstance(document, dict):
        raise BadReport("body", "must be a JSON object with `app` and `reports`")
    try:
        batch: Any = models_for(ctx.settings).model_validate(document)
    except ValidationError as exc:
        raise bad_report(exc) from None
    if batch.app.id != ctx.app_id:
        raise BadReport("app.id", f"{batch.app.id!r} is not the app this ingest key belongs to")
    platform = batch.app.platform.lower()
    if platform and platform not in PLATFORMS:
        platform = "other"
    app_id, received, sent = ctx.app_id, ctx.received_at_ms, _ms(batch.sent_at)
    version, os_version = batch.app.version, batch.app.os_version
    device, network = ctx.hash_device(batch.device.id), batch.device.network
    client_network = ctx.client_network
    records = []
    for report in batch.reports:
        host = report.host.strip().lower().rstrip(".")
        at = _ms(report.at) if report.at is not None else None
        # Positional (order checked at import, see _RECORD_FIELDS): binding 25 keyword
        # arguments took ten times longer, the largest cost of a 50-report batch.
        if report.type == "pin_validation":
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
        request_model=models_for,
        summary="Native batch: one app and device, many pin-validation and network-error reports",
    )
)
