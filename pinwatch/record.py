"""The normalized report record: the one shape every input format becomes on Kafka.

Ingest builds `Record`s (from the native batch, TrustKit, HPKP or NEL), and consumers read them
back. A Kafka message carries one *batch* of records (everything one HTTP request was accepted
with), not one record: aiokafka spends tens of microseconds of Python per message, so a message
per report would cap ingest far below what a batch endpoint needs. The report `id` inside each
record keeps downstream counting idempotent whatever the grouping.

Privacy is settled before a record exists: `device` is already the keyed hash and
`client_network` already the truncated prefix, so raw identifiers never reach Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from pinwatch.vocabulary import ErrorCategory, Format, Kind, Result

SCHEMA_VERSION = 1


@dataclass(slots=True)
class Record:
    id: str  # client report id, or a content hash for formats without one
    kind: Kind
    format: Format
    app_id: str
    host: str
    received_at_ms: int  # ingest clock: the trusted event time for alerting
    event_at_ms: int | None = None  # client clock (may be skewed or device-local)
    sent_at_ms: int | None = None
    app_version: str = ""
    platform: str = ""  # ios, android, tvos, watchos, macos, web, other
    os_version: str = ""
    device: str = ""  # keyed hash of the device id, never the id itself
    network: str = ""  # wifi, cellular, ethernet, ... as the client named it
    client_network: str = ""  # truncated client address prefix, e.g. 203.0.113.0/24
    port: int = 443
    count: int = 1
    # pin validations
    result: Result | None = None
    enforced: bool | None = None  # None: consumers fall back to the host's phase
    observed_pins: list[str] = field(default_factory=list)  # base64 SPKI sha256, leaf first
    known_pins: list[str] = field(default_factory=list)  # pins the client had configured
    served_chain: list[str] = field(default_factory=list)  # base64 DER, leaf first
    # network errors
    error: ErrorCategory | None = None
    detail: str = ""
    # the original payload for sampled evidence (TrustKit, HPKP, NEL); native sends none
    raw: str = ""
    schema: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        data = dict(data)
        data["kind"] = Kind(data["kind"])
        data["format"] = Format(data["format"])
        if data.get("result") is not None:
            data["result"] = Result(data["result"])
        if data.get("error") is not None:
            data["error"] = ErrorCategory(data["error"])
        return cls(**data)


# msgspec encodes slotted dataclasses and StrEnums natively, twice as fast as orjson (the largest
# cost of ingest after parsing, benchmarks/bench_ingest.py), with the same compact output.
encode_json = msgspec.json.Encoder().encode


# A Kafka message value: {"v": SCHEMA_VERSION, "records": [record, ...]}, compact JSON.
ENVELOPE_HEAD = b'{"v":' + str(SCHEMA_VERSION).encode() + b',"records":['
ENVELOPE_TAIL = b"]}"


def envelope(parts: list[bytes]) -> bytes:
    """One message value from records already encoded one by one (`encode_json(record)`): the
    JSON is compact, so joining is exact, and encoding each record once also gives the sizes
    a producer needs to split records over messages."""
    return ENVELOPE_HEAD + b",".join(parts) + ENVELOPE_TAIL


def encode_batch(records: list[Record]) -> bytes:
    """One Kafka message value."""
    return envelope([encode_json(record) for record in records])


class UndecodableBatch(ValueError):
    """A Kafka message that is not a record batch this version understands."""


def decode_batch(value: bytes) -> list[Record]:
    try:
        envelope = orjson.loads(value)
        if not isinstance(envelope, dict) or envelope.get("v") != SCHEMA_VERSION:
            raise UndecodableBatch(f"unknown envelope version: {str(envelope)[:80]!r}")
        return [Record.from_dict(item) for item in envelope["records"]]
    except UndecodableBatch:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UndecodableBatch(f"{type(exc).__name__}: {exc}") from exc
