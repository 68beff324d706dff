"""Decode step: a Kafka message (pinwatch.record's batch envelope) into validated records.

The consumer works on `WireRecord`s, msgspec structs with the fields of `pinwatch.record.Record`
(built from it, so the two cannot drift), decoded and checked by msgspec in C: known fields,
required fields, enum values, value types and ranges. Building `Record` dataclasses (with
their enum objects) per report would cost more than the rest of the consumer's Python; lists
decode as tuples, which classification uses as cache keys as they are.

A batch decodes in one call when every record is valid (real traffic); otherwise each record is
decoded on its own, so one bad record is dead-lettered and its batch goes on.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from pinwatch.record import SCHEMA_VERSION, Record, envelope
from pinwatch.settings import Settings

_UINT32_MAX = 2**32 - 1
# Python's datetime range (years 1 to 9999) in milliseconds: ingest cannot write a time outside
# it (it parses ISO 8601), and a DateTime64 column converts anything inside it back to a
# datetime. Beyond it, a time stores and then fails every later read of its row (2**63 - 1),
# or fails the whole batch's insert (beyond Int64).
_MS_RANGE = msgspec.Meta(ge=-62_135_596_800_000, le=253_402_300_799_999)
# Ranges the `reports` columns impose (UInt32 count, UInt16 port, DateTime64 times): a value out
# of range would fail the whole batch's insert instead of one record.
_RANGES: dict[str, Any] = {
    "count": Annotated[int, msgspec.Meta(ge=0, le=_UINT32_MAX)],
    "port": Annotated[int, msgspec.Meta(ge=0, le=65535)],
    "received_at_ms": Annotated[int, _MS_RANGE],
    "event_at_ms": Annotated[int, _MS_RANGE],
    "sent_at_ms": Annotated[int, _MS_RANGE],
}


def _wire_type(name: str, hint: Any) -> Any:
    """Record's annotation as msgspec should check it: enums as their string values, lists of
    strings as tuples."""
    if name in _RANGES and hint is int:
        return _RANGES[name]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return Literal[tuple(m.value for m in hint)]  # type: ignore[valid-type]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):  # X | None
        return typing.Union[tuple(_wire_type(name, a) for a in args)]  # noqa: UP007
    if typing.get_origin(hint) is list:
        return tuple[args[0], ...]  # type: ignore[valid-type]
    return hint


def _wire_fields() -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(Record)
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(Record):
        wire = _wire_type(f.name, hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default.value if isinstance(f.default, enum.Enum) else f.default
            fields.append((f.name, wire, default))
        elif f.default_factory is not dataclasses.MISSING:
            fields.append((f.name, wire, tuple(f.default_factory())))  # type: ignore[misc]
        else:
            fields.append((f.name, wire))  # type: ignore[arg-type]
    return fields


# gc=False: a record holds only strings, numbers and tuples of strings, never a cycle.
WireRecord: Any = msgspec.defstruct(
    "WireRecord", _wire_fields(), forbid_unknown_fields=True, gc=False
)
_Batch = msgspec.defstruct("Batch", [("v", int), ("records", list[WireRecord])])
_RawBatch = msgspec.defstruct("RawBatch", [("v", int), ("records", list[msgspec.Raw])])
_batch_decoder = msgspec.json.Decoder(_Batch)
_raw_batch_decoder = msgspec.json.Decoder(_RawBatch)
_record_decoder = msgspec.json.Decoder(WireRecord)
_encoder = msgspec.json.Encoder()


class DeadLetterReason:
    UNDECODABLE_MESSAGE = "undecodable_message"  # not a record batch envelope at all
    INVALID_RECORD = "invalid_record"  # one record of a batch does not fit the schema
    UNCLASSIFIABLE_RECORD = "unclassifiable_record"  # e.g. its chain is not certificates


@dataclass(slots=True)
class Rejected:
    reason: str
    detail: str
    value: bytes
    index: int | None  # the record's position in its batch, None for the whole message


def single_record_message(item: Any) -> bytes:
    """A one-record envelope, so a dead letter can be replayed onto the main topic as is.
    `item`: a WireRecord, or a record's raw JSON (msgspec.Raw) exactly as it arrived."""
    return envelope([item if isinstance(item, msgspec.Raw) else _encoder.encode(item)])


_AT = re.compile(r" - at `\$(?:\.records)?(?:\[\d+\])?\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")


def _explain(exc: msgspec.MsgspecError) -> str:
    """msgspec's message with the field first: "count: expected int, got str"."""
    text = str(exc)
    missing = _MISSING.match(text)
    if missing:
        return f"{missing.group(1)}: missing"
    at = _AT.search(text)
    text = _AT.sub("", text).replace("`", "")
    text = text[:1].lower() + text[1:]
    return f"{at.group(1)}: {text}" if at and at.group(1) else text


def _undecodable(detail: str, value: bytes) -> tuple[list[Any], list[Rejected]]:
    return [], [Rejected(DeadLetterReason.UNDECODABLE_MESSAGE, detail, value, None)]


def decode(value: bytes | None) -> tuple[list[Any], list[Rejected]]:
    """(valid WireRecords, Rejected for the message or each invalid record)."""
    value = value or b""
    not_envelope = f"not a v{SCHEMA_VERSION} record batch envelope"
    try:
        batch = _batch_decoder.decode(value)
    except msgspec.MsgspecError:
        pass  # the careful path below says what is wrong, record by record
    else:
        if batch.v != SCHEMA_VERSION:
            return _undecodable(not_envelope, value)
        return batch.records, []
    try:
        raw = _raw_batch_decoder.decode(value)
    except msgspec.ValidationError as exc:
        return _undecodable(f"{not_envelope}: {_explain(exc)}", value)
    except msgspec.DecodeError as exc:
        return _undecodable(str(exc), value)
    if raw.v != SCHEMA_VERSION:
        return _undecodable(not_envelope, value)
    records: list[Any] = []
    rejected: list[Rejected] = []
    for i, item in enumerate(raw.records):
        try:
            records.append(_record_decoder.decode(item))
        except msgspec.MsgspecError as exc:
            detail = _explain(exc)
            rejected.append(
                Rejected(DeadLetterReason.INVALID_RECORD, detail, single_record_message(item), i)
            )
    return records, rejected


_RECEIVED = operator.attrgetter("received_at_ms")
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class ReceivedWindow:
    """Which `received_at` a stored report may have. Ingest stamps it with its own clock, so a
    real record is not from the future (a day of margin for clocks), and `reports` keeps rows
    for `retention_days` only (an older one would be dropped by the TTL as it is written). A
    record outside is invalid: besides, every table is partitioned by the day of `received_at`,
    and a batch spanning more days than an insert may create partitions fails for good."""

    back_ms: int
    ahead_ms: int = _DAY_MS

    @classmethod
    def from_settings(cls, settings: Settings) -> ReceivedWindow:
        return cls(back_ms=settings.retention_days * _DAY_MS)

    @property
    def days(self) -> int:
        """The most calendar days (partitions) one batch of valid records can span."""
        return -(-(self.back_ms + self.ahead_ms) // _DAY_MS) + 1

    def split(self, records: list[Any], now_ms: int) -> tuple[list[Any], list[Rejected]]:
        """(records inside the window, Rejected for the others). Per message: min and max run
        in C; only a message with a record outside is looked at record by record."""
        if not records:
            return records, []
        lo, hi = now_ms - self.back_ms, now_ms + self.ahead_ms
        if lo <= min(map(_RECEIVED, records)) and max(map(_RECEIVED, records)) <= hi:
            return records, []
        keep: list[Any] = []
        rejected: list[Rejected] = []
        for i, r in enumerate(records):
            if lo <= r.received_at_ms <= hi:
                keep.append(r)
                continue
            detail = (
                f"received_at_ms: {r.received_at_ms} is outside what is stored, "
                f"{lo} to {hi} (at most retention_days={self.back_ms // _DAY_MS} days old, "
                f"{self.ahead_ms // _DAY_MS} day ahead of this consumer's clock)"
            )
            rejected.append(
                Rejected(DeadLetterReason.INVALID_RECORD, detail, single_record_message(r), i)
            )
        return keep, rejected
