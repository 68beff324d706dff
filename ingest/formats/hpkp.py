"""HPKP pin-validation failure reports (RFC 7469 section 3), and the fields TrustKit shares.

A UA POSTs one JSON object per failure to the `report-uri` of a `Public-Key-Pins` or
`Public-Key-Pins-Report-Only` header: `date-time`, `hostname`, `port`,
`effective-expiration-date`, `include-subdomains`, `noted-hostname`,
`served-certificate-chain`, `validated-certificate-chain` (PEM strings, leaf first) and
`known-pins`. Chrome, the one browser that shipped HPKP reporting, sent it as
`application/json; charset=utf-8`, with millisecond `date-time`s.

An HPKP report is by definition a failure (pins did not match the validated chain). It does not
say whether it came from the enforcing or the report-only header, so `enforced` is left unset
and consumers fall back to the host's rollout phase. It carries no app identity: the ingest key
names the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingest.formats import register
from ingest.formats.base import FormatSpec, IngestContext, Parsed
from ingest.formats.fields import Fields, bounded_raw, content_id, hostname
from ingest.formats.pem import ParsedCert, parse_chain, parse_known_pins
from pinwatch.record import Record
from pinwatch.vocabulary import Format, Kind, Result


@dataclass
class PinFailureFields:
    """What every HPKP-family report says about the connection that failed."""

    host: str
    port: int
    event_at_ms: int | None
    validated: list[ParsedCert]
    served: list[ParsedCert]
    known_pins: list[str]

    @property
    def chain(self) -> list[ParsedCert]:
        """The chain the pins were checked against (the validated one, which reaches the
        trust anchor and so tells a public chain from a private one), else what was served."""
        return self.validated or self.served

    def record(self, fmt: Format, report_id: str, ctx: IngestContext) -> Record:
        """A pin validation record with the connection and chain filled in."""
        return Record(
            id=report_id,
            kind=Kind.PIN_VALIDATION,
            format=fmt,
            app_id=ctx.app_id,
            host=self.host,
            port=self.port,
            received_at_ms=ctx.received_at_ms,
            event_at_ms=self.event_at_ms,
            client_network=ctx.client_network,
            observed_pins=[cert.pin for cert in self.chain],
            known_pins=self.known_pins,
            served_chain=[cert.b64 for cert in self.chain],
        )


def read_pin_failure(doc: Fields, ctx: IngestContext) -> PinFailureFields:
    settings = ctx.settings
    host = hostname(doc.string("hostname", required=True), doc.where("hostname"))
    chains = {}
    for key in ("validated-certificate-chain", "served-certificate-chain"):
        values = doc.array(key, limit=settings.max_chain_certificates)
        chains[key] = parse_chain(
            values, doc.where(key), max_cert_bytes=settings.max_certificate_bytes
        )
    known = parse_known_pins(
        doc.array("known-pins", limit=settings.max_pins_per_report), doc.where("known-pins")
    )
    return PinFailureFields(
        host=host,
        port=report_port(doc.integer("port", lo=0, hi=65535), host, ctx),
        event_at_ms=doc.timestamp_ms("date-time"),
        validated=chains["validated-certificate-chain"],
        served=chains["served-certificate-chain"],
        known_pins=known,
    )


def report_port(port: int | None, host: str, ctx: IngestContext) -> int:
    """TrustKit (both platforms) always sends port 0: it never learns the real one. The host's
    policy entry knows better than a blanket 443."""
    if port:
        return port
    covering = ctx.policy.host(host)
    return covering.port if covering is not None else 443


def parse(document: Any, ctx: IngestContext) -> Parsed:
    doc = Fields(document, "", ctx.settings.max_string_length)
    failure = read_pin_failure(doc, ctx)
    # Two browsers behind one NAT failing within the same millisecond would merge; a retried
    # upload of the same report must, and only the content can tell.
    record = failure.record(
        Format.HPKP, content_id(Format.HPKP, ctx.app_id, ctx.client_network, document), ctx
    )
    record.platform = "web"
    record.result = Result.PIN_MISMATCH
    record.raw = bounded_raw(document, ctx.settings.max_raw_payload_bytes)
    return Parsed(records=[record])


SPEC = register(
    FormatSpec(
        name=Format.HPKP.value,
        path="/v1/reports/hpkp",
        content_types=("application/json",),
        parse=parse,
        summary="HPKP pin validation failure report (RFC 7469 section 3).",
    )
)
