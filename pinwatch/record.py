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

import struct
from dataclasses import dataclass, field, fields
from itertools import accumulate, chain, pairwise
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
# What ingest writes: the records as columns, msgpack. A fleet sends the same few combinations
# of everything but the per-report fields (one app, a few hosts and versions, a few chains per
# server key): those combinations are written once per message as `profiles`, and each report
# is a row of the per-report columns plus the index of its profile; a chain of a few kilobytes
# travels once per message. Two layouts of the per-report columns, chosen by the message's size
# (`BUFFERS_FROM` records, `encode_batch`):
#
# Version 3 (large messages, what ingest writes under load): the per-report columns as bytes in
# Arrow's layout, so the consumer takes a message's reports without a Python object per value,
# and ingest writes them with one join and one pack per kind (benchmarks/README.md, "Consumer"):
#
#     {"v": 3, "profiles": [[PROFILE_FIELDS values], ...],
#      "profile": uint32 little-endian, the profile's index per report,
#      "strings": [offsets, data]: the ROW_STRINGS columns one after the other (n values
#                 each), int32 little-endian offsets (3n + 1) into their UTF-8 data,
#      "numbers": the ROW_NUMBERS columns one after the other, int64 little-endian, NULL_INT
#                 where a value is None}
#
# Version 2 (small messages, and what a dead letter holds): every column a msgpack array of
# values, which costs either side less than the buffers' fixed cost for a few reports:
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
# The per-report columns holding strings, and those holding integers.
ROW_STRINGS: tuple[str, ...] = ("id", "device", "client_network")
ROW_NUMBERS: tuple[str, ...] = tuple(f for f in ROW_FIELDS if f not in ROW_STRINGS)
COLUMNS_VERSION = 2
BUFFERS_VERSION = 3
NULL_INT = -(2**63)  # None in a version 3 number column (outside every valid value's range)
# Ingest writes a message of this many records or more as version 3, a smaller one as version
# 2. The buffers cost the consumer a fixed ~15 us a message and save it ~0.4 us a report, and
# cost ingest ~0.2 us a report more to encode: the consumer gains from about 30 records a
# message, both together from about 64 (benchmarks/bench_envelope.py).
BUFFERS_FROM = 64
ROW_INDEX = {name: i for i, name in enumerate(ROW_FIELDS)}  # a per-report column's position
_STRING_COLUMNS = tuple(ROW_INDEX[f] for f in ROW_STRINGS)
_NUMBER_COLUMNS = tuple(ROW_INDEX[f] for f in ROW_NUMBERS)
_row = attrgetter(*ROW_FIELDS)
_scalars = attrgetter(*_SCALARS)
_lists = attrgetter(*_LISTS)
_msgpack = msgspec.msgpack.Encoder()


def encode_batch(records: list[Record]) -> bytes:
    """One Kafka message value: version 3 from `BUFFERS_FROM` records on, else version 2."""
    if len(records) >= BUFFERS_FROM:
        return encode_batch_v3(records)
    return encode_batch_v2(records)


def encode_batch_v3(records: list[Record]) -> bytes:
    """A version 3 message value (columns as buffers)."""
    profiles, codes, rows = _columns(records)
    n = len(codes)
    values = list(chain.from_iterable(rows[i] for i in _STRING_COLUMNS))
    text = "".join(values)
    data = text.encode()
    # A character is a byte when the text encodes to as many bytes as it has characters (all
    # ASCII, as ids, device hashes and prefixes are); otherwise each value is measured.
    lengths = map(len, values) if len(data) == len(text) else (len(v.encode()) for v in values)
    # struct, not numpy: as fast per value, and a few microseconds less per message.
    offsets = struct.pack(f"<{len(values) + 1}i", *accumulate(lengths, initial=0))
    numbers = [rows[i] for i in _NUMBER_COLUMNS]
    try:
        packed = struct.pack(f"<{n * len(numbers)}q", *chain.from_iterable(numbers))
    except struct.error:  # a None (checking for one first costs more than this)
        nulls = [NULL_INT if v is None else v for v in chain.from_iterable(numbers)]
        packed = struct.pack(f"<{len(nulls)}q", *nulls)
    return _msgpack.encode(
        {
            "v": BUFFERS_VERSION,
            "profiles": profiles,
            "profile": struct.pack(f"<{n}I", *codes),
            "strings": [offsets, data],
            "numbers": packed,
        }
    )


def encode_batch_v2(records: list[Record]) -> bytes:
    """A version 2 message value (columns as msgpack lists)."""
    profiles, codes, rows = _columns(records)
    return _msgpack.encode(
        {"v": COLUMNS_VERSION, "profiles": profiles, "profile": codes, "rows": rows}
    )


def _columns(records: list[Record]) -> tuple[list[list[Any]], list[int], list[list[Any]]]:
    """(distinct profiles, each record's profile index, the per-report columns)."""
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
    return profiles, codes, rows


def as_columns(data: dict[str, Any]) -> dict[str, Any]:
    """A version 3 message (as msgpack decodes it) in version 2's shape, every column a list of
    values: for readers that want Python values (tools, the consumer's record-by-record path).
    A string that is not UTF-8 stays bytes (the record's schema check names it); raises
    ValueError naming the buffer that does not hold its columns."""
    codes = _ints_of("profile", data.get("profile"), "I")
    n = len(codes)
    strings = _strings_of(n * len(ROW_STRINGS), data.get("strings"))
    numbers = _ints_of("numbers", data.get("numbers"), "q")
    if len(numbers) != n * len(ROW_NUMBERS):
        raise ValueError(f"numbers: expected {n * len(ROW_NUMBERS)} values")
    columns = {
        **{name: strings[k * n : (k + 1) * n] for k, name in enumerate(ROW_STRINGS)},
        **{
            name: [None if v == NULL_INT else v for v in numbers[k * n : (k + 1) * n]]
            for k, name in enumerate(ROW_NUMBERS)
        },
    }
    rows = [columns[name] for name in ROW_FIELDS]
    return {"v": COLUMNS_VERSION, "profiles": data.get("profiles"), "profile": codes, "rows": rows}


def _ints_of(name: str, buffer: Any, code: str) -> list[int]:
    """A buffer of little-endian integers (`code` as the struct module names their kind)."""
    width = struct.calcsize(f"<{code}")
    if not isinstance(buffer, bytes) or len(buffer) % width:
        raise ValueError(f"{name}: expected {width}-byte integers")
    return list(struct.unpack(f"<{len(buffer) // width}{code}", buffer))


def _strings_of(count: int, buffers: Any) -> list[Any]:
    if not (isinstance(buffers, list) and len(buffers) == 2):
        raise ValueError("strings: expected [offsets, data]")
    offsets, data = _ints_of("strings", buffers[0], "i"), buffers[1]
    if len(offsets) != count + 1 or not isinstance(data, bytes):
        raise ValueError(f"strings: expected {count + 1} offsets and the data")
    if offsets[0] != 0 or offsets[-1] != len(data) or any(a > b for a, b in pairwise(offsets)):
        raise ValueError("strings: offsets do not run from 0 to the data's end in order")
    values: list[Any] = []
    for a, b in pairwise(offsets):
        try:
            values.append(data[a:b].decode())
        except UnicodeDecodeError:
            values.append(data[a:b])
    return values


def encoded_size_bound(record: Record) -> int:
    """About what `record` adds to a message at most (its profile written in full,
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
    """The records of a message value of any version (tests and tools; the consumer has its
    own validating decoder, consumers/decode.py)."""
    try:
        if value[:1] == b"{":
            data = orjson.loads(value)
            if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION:
                raise UndecodableBatch(f"unknown envelope version: {str(data)[:80]!r}")
            return [Record.from_dict(item) for item in data["records"]]
        data = msgspec.msgpack.decode(value)
        if isinstance(data, dict) and data.get("v") == BUFFERS_VERSION:
            data = as_columns(data)
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
