"""W3C Network Error Logging reports, delivered by the Reporting API.

A browser POSTs `application/reports+json`: an array of `{age, type, url, user_agent, body}`,
where `age` is milliseconds between the event and the upload and a NEL report's `type` is
`network-error`. Its body carries `phase` (dns, connection, application), `type` (the error,
or `ok` for a sampled success), `sampling_fraction`, `elapsed_time`, `server_ip`, `protocol`,
`method`, `status_code` and `referrer`.

The array is a batch of independent reports, so a bad item is rejected and counted while the
good ones flow; only a body that is not an array, or has more items than
`max_reports_per_batch`, rejects the request.

Mapping, from the spec's and Chromium's type lists:
- `tls.cert.pinned_key_not_in_cert_chain`: a pin failure (pin_mismatch, enforced: the browser
  refused the connection). NEL carries no chain, so no observed pins.
- `ok`: a pin validation that succeeded (result ok).
- every other type: a network error, its category from the prefix (dns, tcp, tls; http, h2,
  h3 and quic are http; abandoned, unknown and anything else other), the normalized type as
  detail.
- `sampling_fraction` says how many requests one report stands for: a report sampled at 0.01
  counts 100, so success and failure ratios stay right when success_fraction and
  failure_fraction differ.
- event time is arrival minus `age`; the host and port come from `url`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from ingest.formats import register
from ingest.formats.base import BadReport, FormatSpec, IngestContext, Parsed, Rejection
from ingest.formats.fields import Fields, bounded_raw, content_id, hostname
from pinwatch.record import Record
from pinwatch.vocabulary import ErrorCategory, Format, Kind, Result

PIN_FAILURE = "tls.cert.pinned_key_not_in_cert_chain"
_CATEGORIES = {
    "dns": ErrorCategory.DNS,
    "tcp": ErrorCategory.TCP,
    "tls": ErrorCategory.TLS,
    "http": ErrorCategory.HTTP,
    "h2": ErrorCategory.HTTP,
    "h3": ErrorCategory.HTTP,
    "quic": ErrorCategory.HTTP,
}
_TYPE = re.compile(r"^[a-z0-9_.]+$")
# A report kept by the browser longer than this is not worth an event time (Chrome drops
# reports after a few attempts spread over minutes; a week covers any clock it trusts).
_MAX_AGE_MS = 7 * 24 * 3600 * 1000
_MIN_SAMPLING = 1e-4  # so one report never stands for more than 10,000 requests
# Event times are bucketed to the minute for the report id: a retried upload carries a larger
# `age`, so arrival minus age only agrees with the first attempt up to network delay.
_ID_BUCKET_MS = 60_000


def normalize_type(value: str) -> str:
    """One spelling per error: lower case, and the `protocol_error` some vendors send for the
    spec's `protocol.error` (h2.protocol_error -> h2.protocol.error)."""
    name = value.strip().lower().replace("-", "_")
    return name.replace("protocol_error", "protocol.error")


def category_of(error_type: str) -> ErrorCategory:
    return _CATEGORIES.get(error_type.split(".", 1)[0], ErrorCategory.OTHER)


def parse(document: Any, ctx: IngestContext) -> Parsed:
    settings = ctx.settings
    if not isinstance(document, list):
        raise BadReport("body", "must be a JSON array of reports (application/reports+json)")
    if len(document) > settings.max_reports_per_batch:
        raise BadReport(
            "body",
            f"{len(document)} reports, at most {settings.max_reports_per_batch} per request",
            413,
        )
    parsed = Parsed(records=[])
    for index, item in enumerate(document):
        try:
            parsed.records.append(_parse_item(item, index, ctx))
        except BadReport as exc:
            parsed.rejected.append(Rejection(index=index, field=exc.field, problem=exc.problem))
    return parsed


def _parse_item(item: Any, index: int, ctx: IngestContext) -> Record:
    report = Fields(item, f"[{index}]", ctx.settings.max_string_length)
    report_type = report.string("type", required=True)
    if report_type != "network-error":
        raise BadReport(report.where("type"), f"{report_type[:40]!r} is not a NEL report")
    age = report.integer("age", lo=0, hi=_MAX_AGE_MS) or 0
    # Page URLs carry paths and queries far longer than a free-text field; only the host is
    # kept, and an item longer than the kept payload is cut anyway.
    url = report.string("url", required=True, limit=ctx.settings.max_raw_payload_bytes)
    host, port = _host_port(url, report.where("url"))
    body = report.obj("body")
    raw_type = body.string("type", required=True)
    error_type = normalize_type(raw_type)
    if not _TYPE.match(error_type):
        raise BadReport(body.where("type"), f"not a NEL error type: {raw_type[:40]!r}")
    fraction = body.number("sampling_fraction", lo=0.0, hi=1.0)
    status = body.integer("status_code", lo=0, hi=999)
    event_at = ctx.received_at_ms - age
    record = Record(
        id=content_id(
            Format.NEL,
            ctx.app_id,
            ctx.client_network,
            event_at // _ID_BUCKET_MS,
            url,
            report.data.get("user_agent"),
            body.data,
        ),
        kind=Kind.PIN_VALIDATION,
        format=Format.NEL,
        app_id=ctx.app_id,
        host=host,
        port=port,
        received_at_ms=ctx.received_at_ms,
        event_at_ms=event_at,
        platform="web",
        client_network=ctx.client_network,
        count=_count(fraction),
        raw=bounded_raw(item, ctx.settings.max_raw_payload_bytes),
    )
    if error_type == PIN_FAILURE:
        record.result = Result.PIN_MISMATCH
        record.enforced = True
    elif error_type == "ok":
        record.result = Result.OK
    else:
        record.kind = Kind.NETWORK_ERROR
        record.error = category_of(error_type)
        record.detail = f"{error_type} {status}" if error_type == "http.error" else error_type
    return record


def _host_port(url: str, where: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadReport(where, f"not a URL: {url[:64]!r}") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BadReport(where, f"not an http(s) URL with a host: {url[:64]!r}")
    return hostname(parts.hostname, where), port or (443 if parts.scheme == "https" else 80)


def _count(fraction: float | None) -> int:
    if not fraction:  # absent, or 0 (nothing would have been sent at 0)
        return 1
    return round(1 / max(fraction, _MIN_SAMPLING))


SPEC = register(
    FormatSpec(
        name=Format.NEL.value,
        path="/v1/reports/nel",
        # Chrome's Reporting API uploads application/reports+json; other senders and hand
        # tests use plain JSON.
        content_types=("application/reports+json", "application/json"),
        parse=parse,
        summary="W3C Network Error Logging reports (Reporting API, Report-To / NEL headers).",
    )
)
