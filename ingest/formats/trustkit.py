"""TrustKit pin failure reports, as TrustKit iOS (`TSKPinFailureReport`) and TrustKit-Android
(`PinningFailureReport`) POST them to each `kTSKReportUris` / `reportUri`.

The HPKP fields (see hpkp.py) plus the app's identity: `app-bundle-id`, `app-version`,
`app-platform` (IOS, TVOS, WATCHOS, MACOS, ANDROID), `app-platform-version` (iOS only),
`app-vendor-id`, `trustkit-version`, `enforce-pinning`, `validation-result` and
`known-pins-expiration-date` (iOS only). What the sources say and pinwatch therefore does:

- `port` is always 0 (neither client learns it): the host's policy port, else 443.
- `date-time`: iOS formats UTC; Android formats *device-local* time followed by a literal `Z`,
  and iOS uploads through a discretionary background session that may run hours later. The
  client time is kept as `event_at`; `received_at` (ingest's clock) is the trusted time.
- `validation-result` is the client's enum: 0 success, 1 no pin matched (pin_mismatch),
  2 chain not trusted (chain_invalid), 3 invalid parameters, 4 no pin matched but the chain ends
  at a user-installed anchor (macOS only: a pin_mismatch that consumers will see is not on a
  public root), 5 the SPKI could not be hashed. 3 and 5 say nothing about the server's keys
  (they are client bugs, e.g. an iOS 9 keychain failure) so they become `network_error` records
  of category `other` (detail `trustkit.invalid_parameters` / `trustkit.spki_hash_failed`):
  visible, but never moving the pin-failure ratio that pages for a rotation.
- `app-vendor-id` (identifierForVendor / a per-install UUID) is the device id; only its keyed
  hash is kept, as the record's `device` and in place of the id in the kept raw payload.
- The app identity is the ingest key's. `app-bundle-id` is self-declared by whoever holds the
  key, so checking it adds no authentication; rejecting a mismatch would only drop real failure
  reports from apps whose iOS bundle id and Android package name differ, or from beta builds
  with a suffixed id (and TrustKit ignores the response, so nobody would notice). A mismatch is
  logged once per (app, bundle id) so a key pasted into the wrong app is still visible.
"""

from __future__ import annotations

import logging
from typing import Any

from ingest.formats import register
from ingest.formats.base import BadReport, FormatSpec, IngestContext, Parsed
from ingest.formats.fields import Fields, bounded_raw, content_id
from ingest.formats.hpkp import read_pin_failure
from pinwatch.logs import event
from pinwatch.vocabulary import OTHER, ErrorCategory, Format, Kind, Result

log = logging.getLogger(__name__)

_PLATFORMS = {  # TrustKit's app-platform -> pinwatch's platform
    "IOS": "ios",
    "TVOS": "tvos",
    "WATCHOS": "watchos",
    "MACOS": "macos",
    "ANDROID": "android",
}
# Early TrustKit iOS reports had no app-platform (nor enforce-pinning); TrustKit-Android
# has always sent it.
_PLATFORM_WHEN_MISSING = "ios"

_PIN_RESULTS = {
    0: Result.OK,
    1: Result.PIN_MISMATCH,
    2: Result.CHAIN_INVALID,
    4: Result.PIN_MISMATCH,
}
VENDOR_ID = "app-vendor-id"  # the device id: identifierForVendor / a per-install UUID
_CLIENT_ERRORS = {3: "trustkit.invalid_parameters", 5: "trustkit.spki_hash_failed"}

_MISMATCHES_LOGGED: set[tuple[str, str]] = set()
_MAX_MISMATCHES_LOGGED = 1000


def parse(document: Any, ctx: IngestContext) -> Parsed:
    doc = Fields(document, "", ctx.settings.max_string_length)
    outcome = doc.integer("validation-result", lo=0, hi=5)
    if outcome is None:
        raise BadReport("validation-result", "required")
    failure = read_pin_failure(doc, ctx)
    bundle_id = doc.string("app-bundle-id")
    _note_bundle_mismatch(ctx.app_id, bundle_id)
    platform_name = doc.string("app-platform")
    platform = _PLATFORMS.get(platform_name.upper(), OTHER) if platform_name else None
    vendor_id = doc.string(VENDOR_ID)
    # iOS retries the very same file; the vendor id and date-time keep two devices (or two
    # failures a second apart) distinct.
    record = failure.record(Format.TRUSTKIT, content_id(Format.TRUSTKIT, ctx.app_id, document), ctx)
    record.app_version = doc.string("app-version")
    record.platform = platform or _PLATFORM_WHEN_MISSING
    record.os_version = doc.string("app-platform-version")
    record.device = ctx.hash_device(vendor_id)
    # The payload kept as evidence reaches Kafka and ClickHouse: it carries the device id as
    # `device` does, keyed-hashed (pinwatch.privacy), never as sent.
    kept = {**document, VENDOR_ID: record.device} if vendor_id else document
    record.raw = bounded_raw(kept, ctx.settings.max_raw_payload_bytes)
    if outcome in _CLIENT_ERRORS:
        # not a statement about the server's keys: no pins, no chain, no result
        record.kind = Kind.NETWORK_ERROR
        record.error = ErrorCategory.OTHER
        record.detail = _CLIENT_ERRORS[outcome]
        record.observed_pins, record.known_pins, record.served_chain = [], [], []
    else:
        record.result = _PIN_RESULTS[outcome]
        record.enforced = doc.boolean("enforce-pinning")  # absent from early TrustKit iOS reports
    return Parsed(records=[record])


def _note_bundle_mismatch(app_id: str, bundle_id: str) -> None:
    if not bundle_id or bundle_id == app_id:
        return
    key = (app_id, bundle_id)
    if key in _MISMATCHES_LOGGED or len(_MISMATCHES_LOGGED) >= _MAX_MISMATCHES_LOGGED:
        return
    _MISMATCHES_LOGGED.add(key)
    event(log, "trustkit_bundle_id_differs", level=logging.WARNING, app=app_id, bundle_id=bundle_id)


SPEC = register(
    FormatSpec(
        name=Format.TRUSTKIT.value,
        path="/v1/reports/trustkit",
        content_types=("application/json",),
        parse=parse,
        summary="TrustKit iOS / Android pin failure report (kTSKReportUris, reportUri).",
    )
)
