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

from dataclasses import dataclass, field, fields
from operator import attrgetter
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


# --- the Kafka message value ---------------------------------------------------------------------
#
# Version 2 (what ingest writes): the records as columns, msgpack. A fleet sends the same few
# combinations of everything but the per-report fields (one app, a few hosts and versions, a few
# chains per server key): those combinations are written once per message as `profiles`, and
# each report is a row of the per-report columns plus the index of its profile. The consumer
# decodes a message in a handful of C calls and classifies once per profile, not per report
# (benchmarks/README.md, "Consumer"); a chain of a few kilobytes travels once per message.
#
#     {"v": 2, "profiles": [[PROFILE_FIELDS values], ...], "profile": [index per report],
#      "rows": [[ROW_FIELDS[0] per report], [ROW_FIELDS[1] per report], ...]}
#
# Version 1 (written before 2026-12; still read by the consumer for one release, for records
# already on Kafka at upgrade time and dead letters replayed since): compact JSON,
# {"v": 1, "records": [record, ...]}.

ROW_FIELDS: tuple[str, ...] = (
    "id",
    "received_at_ms",
    "event_at_ms",
    "sent_at_ms",
    "device",
    "client_network",
    "count",
)
PROFILE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Record) if f.name not in ROW_FIELDS)
_LISTS = ("observed_pins", "known_pins", "served_chain")
_SCALARS = tuple(f for f in PROFILE_FIELDS if f not in _LISTS)
# The encoder's keys, and where each profile field is in them.
_PROFILE_ORDER = tuple((_SCALARS + _LISTS).index(f) for f in PROFILE_FIELDS)
COLUMNS_VERSION = 2
_row = attrgetter(*ROW_FIELDS)
_scalars = attrgetter(*_SCALARS)
_lists = attrgetter(*_LISTS)
_msgpack = msgspec.msgpack.Encoder()


def encode_batch(records: list[Record]) -> bytes:
    """One Kafka message value (version 2, columns)."""
    index: dict[tuple[Any, ...], int] = {}
    codes = []
    for r in records:
        observed, known, chain = _lists(r)
        key = (*_scalars(r), tuple(observed), tuple(known), tuple(chain))
        code = index.get(key)
        if code is None:
            code = index[key] = len(index)
        codes.append(code)
    order = _PROFILE_ORDER
    profiles = [[key[i] for i in order] for key in index]
    rows = (
        [list(column) for column in zip(*map(_row, records), strict=True)]
        if records
        else [[] for _ in ROW_FIELDS]
    )
    return _msgpack.encode(
        {"v": COLUMNS_VERSION, "profiles": profiles, "profile": codes, "rows": rows}
    )


def encoded_size_bound(record: Record) -> int:
    """About what `record` adds to a version 2 message at most (its profile written in full,
    as if no other record shared it): what a producer adds up to keep messages under a size,
    without encoding anything. Strings count their characters (an encoded byte each for
    the ASCII a record holds; `encode_batch` is checked against the real limit anyway)."""
    return (
        _PER_RECORD
        + len(record.id)
        + len(record.device)
        + len(record.client_network)
        + len(record.app_id)
        + len(record.host)
        + len(record.app_version)
        + len(record.os_version)
        + len(record.network)
        + len(record.detail)
        + len(record.raw)
        + 50 * (len(record.observed_pins) + len(record.known_pins))
        + sum(map(len, record.served_chain))
        + 3 * len(record.served_chain)
    )


# Numbers (9 bytes each at most), enum strings, array and string headers of one record.
_PER_RECORD = 160


ENVELOPE_HEAD = b'{"v":' + str(SCHEMA_VERSION).encode() + b',"records":['
ENVELOPE_TAIL = b"]}"


def envelope(parts: list[bytes]) -> bytes:
    """A version 1 message value from records already encoded one by one (`encode_json(record)`):
    the JSON is compact, so joining is exact. Ingest no longer writes these; the consumer's
    dead letters of records that arrived this way keep them as they came."""
    return ENVELOPE_HEAD + b",".join(parts) + ENVELOPE_TAIL


def encode_batch_v1(records: list[Record]) -> bytes:
    """A version 1 message value, as ingest wrote them before version 2 (tests of the upgrade)."""
    return envelope([encode_json(record) for record in records])


class UndecodableBatch(ValueError):
    """A Kafka message that is not a record batch this version understands."""


def decode_batch(value: bytes) -> list[Record]:
    """The records of a message value of either version (tests and tools; the consumer has its
    own validating decoder, consumers/decode.py)."""
    try:
        if value[:1] == b"{":
            data = orjson.loads(value)
            if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION:
                raise UndecodableBatch(f"unknown envelope version: {str(data)[:80]!r}")
            return [Record.from_dict(item) for item in data["records"]]
        data = msgspec.msgpack.decode(value)
        if not isinstance(data, dict) or data.get("v") != COLUMNS_VERSION:
            raise UndecodableBatch(f"unknown envelope version: {str(data)[:80]!r}")
        profiles = [dict(zip(PROFILE_FIELDS, p, strict=True)) for p in data["profiles"]]
        rows = zip(*data["rows"], strict=True) if data["profile"] else ()
        return [
            Record.from_dict({**profiles[code], **dict(zip(ROW_FIELDS, row, strict=True))})
            for code, row in zip(data["profile"], rows, strict=True)
        ]
    except UndecodableBatch:
        raise
    except (orjson.JSONDecodeError, msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
        raise UndecodableBatch(f"{type(exc).__name__}: {exc}") from exc
