"""Decoding: a Kafka message (any version of pinwatch.record's envelope) into a `Block`.

A `Block` is one message's valid reports as columns: the distinct `Profile`s (every field of
`pinwatch.record.Record` but the per-report ones, `PROFILE_FIELDS`) and, per report, the index of
its profile and its per-report values (`ROW_FIELDS`). Version 3 messages (what ingest writes
for large messages) carry the per-report values as buffers: one msgspec call reads the message,
numpy checks the numbers' ranges and Arrow the strings' offsets and UTF-8, and the block keeps
them as arrays for the insert, with no Python object per value. Version 2 messages (small ones:
the same columns as msgpack lists) decode in one msgspec call, checked in C (known fields, enum
values, value types and ranges); version 1 messages (one JSON object per record, read for one
release) are decoded as `WireRecord`s and grouped into a block in Python. The structs are built
from `Record` itself, so they cannot drift from it.

A message decodes whole when every record is valid (real traffic); otherwise record by record
(version 3 read as version 2's lists), so one bad record is dead-lettered and the rest of its
message goes on.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from dataclasses import dataclass
from itertools import compress
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import pyarrow as pa

from pinwatch.record import (
    BUFFERS_VERSION,
    COLUMNS_VERSION,
    NULL_INT,
    PROFILE_FIELDS,
    ROW_FIELDS,
    ROW_INDEX,
    ROW_NUMBERS,
    ROW_STRINGS,
    SCHEMA_VERSION,
    Record,
    as_columns,
    envelope,
)
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

_FIELDS = {f[0]: f for f in _wire_fields()}
# Frozen: a profile is a dictionary key (classification is cached per profile).
Profile: Any = msgspec.defstruct(
    "Profile",
    [(name, _FIELDS[name][1]) for name in PROFILE_FIELDS],
    array_like=True,
    frozen=True,
    gc=False,
)
_Rows = msgspec.defstruct(
    "Rows", [(name, list[_FIELDS[name][1]]) for name in ROW_FIELDS], array_like=True, gc=False
)
_Columns = msgspec.defstruct(
    "Columns",
    [
        ("v", Literal[COLUMNS_VERSION]),
        ("profiles", list[Profile]),
        ("profile", list[Annotated[int, msgspec.Meta(ge=0)]]),
        ("rows", _Rows),
    ],
)
_columns_decoder = msgspec.msgpack.Decoder(_Columns)
# Version 3: the per-report columns as buffers, checked with numpy and Arrow (`_decode_v3`).
_Buffers = msgspec.defstruct(
    "Buffers",
    [
        ("v", Literal[BUFFERS_VERSION]),
        ("profiles", list[Profile]),
        ("profile", bytes),
        ("strings", tuple[bytes, bytes]),
        ("numbers", bytes),
    ],
)
_buffers_decoder = msgspec.msgpack.Decoder(_Buffers)
# A version 3 message as ingest writes it starts so: a map of 5 keys, "v" first.
_BUFFERS_HEAD = b"\x85" + msgspec.msgpack.encode({"v": BUFFERS_VERSION})[1:]
# Each number column's valid range (as msgspec checks version 1 and 2 records), and whether
# it may hold None.
_INT_RANGES = {
    name: (meta.ge, meta.le, name not in ("received_at_ms", "count"))
    for name, hint in _RANGES.items()
    if name in ROW_FIELDS
    for meta in typing.get_args(hint)[1:]
}
assert ROW_NUMBERS[:3] == ("received_at_ms", "event_at_ms", "sent_at_ms")
_TIMES = 3
_ID, _RECEIVED = ROW_INDEX["id"], ROW_INDEX["received_at_ms"]
_msgpack_encoder = msgspec.msgpack.Encoder()
_ROW_COUNT = len(ROW_FIELDS)


class Block:
    """One message's valid reports, as columns (see the module's docstring). `index` is each
    report's position in its message (dead letters name it).

    A block holds its per-report columns one of two ways. Version 3 messages give them as
    buffers (`arrays`: Arrow string arrays and int64 numpy arrays, `NULL_INT` for None), which
    the batch's table takes whole; `profile`, `rows` and `ids` are then made as Python lists
    only when asked (ids for deduplication, the rest on the rare paths: a report to drop, to
    dead-letter or to sample). Older versions and filtered blocks hold the lists themselves."""

    __slots__ = ("profiles", "index", "_profile", "_rows", "_arrays", "_n", "_span", "_codes")

    def __init__(
        self,
        profiles: list[Any],
        profile: list[int],
        rows: list[list[Any]],
        index: list[int] | range,
    ) -> None:
        self.profiles = profiles
        self.index = index
        self._profile: list[int] | None = profile
        self._rows: list[list[Any] | None] = list(rows)
        self._arrays: list[Any] | None = None
        self._n = len(profile)
        # (oldest, newest) received_at, computed once: the window, the id memory, the batch
        # and the evidence sampling all ask.
        self._span: tuple[int, int] | None = None
        self._codes: Any = None

    @classmethod
    def of_arrays(cls, profiles: list[Any], codes: Any, arrays: list[Any]) -> Block:
        """A version 3 block: `codes` the profile index per report (numpy), `arrays` the
        per-report columns in `ROW_FIELDS` order (see the class's docstring)."""
        block = cls(profiles, [], [], range(len(codes)))
        block._profile = None
        block._rows = [None] * len(ROW_FIELDS)
        block._arrays = arrays
        block._n = len(codes)
        block._codes = codes
        return block

    def __len__(self) -> int:
        return self._n

    @property
    def arrays(self) -> list[Any] | None:
        """The per-report columns as buffers (version 3), else None."""
        return self._arrays

    @property
    def profile(self) -> list[int]:
        if self._profile is None:
            self._profile = self._codes.tolist()
        return self._profile

    def column(self, i: int) -> list[Any]:
        """Per-report column `i` (of `ROW_FIELDS`) as a list of values."""
        values = self._rows[i]
        if values is None:
            array = self._arrays[i]  # type: ignore[index]
            if isinstance(array, np.ndarray):
                values = array.tolist()
                if (array == NULL_INT).any():
                    values = [None if v == NULL_INT else v for v in values]
            else:
                values = array.to_pylist()
            self._rows[i] = values
        return values

    @property
    def rows(self) -> list[list[Any]]:
        return [self.column(i) for i in range(len(ROW_FIELDS))]

    def span(self) -> tuple[int, int]:
        """(oldest, newest) received_at of the block's reports (it has some)."""
        if self._span is None:
            if self._rows[_RECEIVED] is None:
                received = self._arrays[_RECEIVED]  # type: ignore[index]
                self._span = (int(received.min()), int(received.max()))
            else:
                received = self._rows[_RECEIVED]
                self._span = (min(received), max(received))
        return self._span

    @property
    def ids(self) -> list[str]:
        return self.column(_ID)

    @property
    def received(self) -> list[int]:
        return self.column(_RECEIVED)

    def codes(self) -> Any:
        """`profile` as a numpy array (tally and columns index with it)."""
        if self._codes is None:
            self._codes = np.asarray(self._profile, dtype=np.intp)
        return self._codes

    def take(self, keep: list[bool]) -> Block:
        """The reports where `keep` is true (the rare path: rejected or duplicate reports)."""
        return Block(
            self.profiles,
            list(compress(self.profile, keep)),
            [list(compress(column, keep)) for column in self.rows],
            list(compress(self.index, keep)),
        )

    def record(self, row: int) -> dict[str, Any]:
        """Report `row` as a `Record`'s fields (a dead letter's content)."""
        profile = self.profiles[self.profile[row]]
        values = dict(zip(PROFILE_FIELDS, msgspec.structs.astuple(profile), strict=True))
        values.update(zip(ROW_FIELDS, (column[row] for column in self.rows), strict=True))
        return values

    @classmethod
    def of_records(cls, records: list[Any], index: list[int] | range) -> Block:
        """A block of version 1 records (WireRecords), grouped by profile in Python."""
        codes: dict[Any, int] = {}
        profile = []
        for r in records:
            p = Profile(*(getattr(r, name) for name in PROFILE_FIELDS))
            code = codes.get(p)
            if code is None:
                code = codes[p] = len(codes)
            profile.append(code)
        rows = [[getattr(r, name) for r in records] for name in ROW_FIELDS]
        return cls(list(codes), profile, rows, index)


def dead_letter_value(fields: dict[str, Any]) -> bytes:
    """A one-report version 2 envelope of a report's fields (as `Block.record` gives them, or as
    an invalid record arrived), so a dead letter can be replayed onto the main topic as is."""
    return _msgpack_encoder.encode(
        {
            "v": COLUMNS_VERSION,
            "profiles": [[fields.get(name) for name in PROFILE_FIELDS]],
            "profile": [0],
            "rows": [[fields.get(name)] for name in ROW_FIELDS],
        }
    )


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


def decode(value: bytes | None) -> tuple[Block, list[Rejected]]:
    """(a block of the valid reports, Rejected for the message or each invalid record)."""
    value = value or b""
    if value[: len(_BUFFERS_HEAD)] == _BUFFERS_HEAD:
        block = _decode_v3(value)
        if block is not None:
            return block, []
        return _decode_v2_carefully(value)
    if value[:1] == b"{":
        records, index, rejected = _decode_v1(value)
        return Block.of_records(records, index), rejected
    try:
        columns = _columns_decoder.decode(value)
    except msgspec.MsgspecError:
        pass  # the careful path below says what is wrong, record by record
    else:
        rows = msgspec.structs.astuple(columns.rows)
        n = len(columns.profile)
        if all(len(column) == n for column in rows) and (
            not n or max(columns.profile) < len(columns.profiles)
        ):
            return Block(columns.profiles, columns.profile, list(rows), range(n)), []
    return _decode_v2_carefully(value)


def _decode_v3(value: bytes) -> Block | None:
    """A version 3 message whose every report is valid, its columns kept as buffers and
    checked in a few calls per message; None when anything is off (the careful path then says
    what, report by report)."""
    try:
        message = _buffers_decoder.decode(value)
    except msgspec.MsgspecError:
        return None
    if len(message.profile) % 4:
        return None
    return _as_arrays(message, len(message.profile) // 4)


def _as_arrays(message: Any, n: int) -> Block | None:
    """The message's columns kept as buffers, checked in a few calls per message."""
    offsets, data = message.strings
    codes = np.frombuffer(message.profile, dtype="<u4")
    if n and int(codes.max()) >= len(message.profiles):
        return None
    if len(offsets) != 4 * (n * len(ROW_STRINGS) + 1) or len(message.numbers) != 8 * n * len(
        ROW_NUMBERS
    ):
        return None
    try:
        strings = pa.Array.from_buffers(
            pa.string(), n * len(ROW_STRINGS), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )
        strings.validate(full=True)  # offsets in order and inside the data, the data UTF-8
    except pa.ArrowInvalid:
        return None
    numbers = np.frombuffer(message.numbers, dtype="<i8")
    columns: dict[str, Any] = {name: strings.slice(k * n, n) for k, name in enumerate(ROW_STRINGS)}
    columns.update((name, numbers[k * n : (k + 1) * n]) for k, name in enumerate(ROW_NUMBERS))
    # The three times share a range: one look at them all when every one is set and valid.
    times = numbers[: n * _TIMES]
    low, high, _ = _INT_RANGES["received_at_ms"]
    if (
        n
        and not (low <= times.min() and times.max() <= high)
        and not all(_in_range(name, columns[name]) for name in ROW_NUMBERS[:_TIMES])
    ):
        return None
    if not _in_range("count", columns["count"]):
        return None
    arrays = [columns[name] for name in ROW_FIELDS]
    return Block.of_arrays(message.profiles, codes.astype(np.intp), arrays)


def _in_range(name: str, values: np.ndarray) -> bool:
    """Whether a number column's values are all valid (None as NULL_INT where allowed)."""
    if not len(values):
        return True
    low, high, nullable = _INT_RANGES[name]
    if low <= values.min() and values.max() <= high:
        return True
    if not nullable:
        return False
    known = values[values != NULL_INT]
    return not len(known) or bool(low <= known.min() and known.max() <= high)


def _empty() -> Block:
    return Block([], [], [[] for _ in ROW_FIELDS], [])


def _decode_v2_carefully(value: bytes) -> tuple[Block, list[Rejected]]:
    """Version 2 or 3, report by report (version 3 read as version 2's lists)."""
    not_envelope = (
        f"not a v{BUFFERS_VERSION} or v{COLUMNS_VERSION} (msgpack) "
        f"or v{SCHEMA_VERSION} (JSON) report envelope"
    )
    try:
        data = msgspec.msgpack.decode(value)
    except msgspec.MsgspecError as exc:
        return _empty(), _undecodable(f"{not_envelope}: {exc}", value)[1]
    if isinstance(data, dict) and data.get("v") == BUFFERS_VERSION:
        try:
            data = as_columns(data)
        except ValueError as exc:
            return _empty(), _undecodable(f"{not_envelope}: {exc}", value)[1]
    shape_ok = (
        isinstance(data, dict)
        and data.get("v") == COLUMNS_VERSION
        and isinstance(data.get("profiles"), list)
        and isinstance(data.get("profile"), list)
        and isinstance(data.get("rows"), list)
        and len(data["rows"]) == _ROW_COUNT
        and all(isinstance(c, list) and len(c) == len(data["profile"]) for c in data["rows"])
    )
    if not shape_ok:
        return _empty(), _undecodable(not_envelope, value)[1]
    records: list[Any] = []
    index: list[int] = []
    rejected: list[Rejected] = []
    profiles = data["profiles"]
    for i, code in enumerate(data["profile"]):
        fields: dict[str, Any] = dict(zip(ROW_FIELDS, (c[i] for c in data["rows"]), strict=True))
        profile = profiles[code] if type(code) is int and 0 <= code < len(profiles) else None
        if isinstance(profile, list) and len(profile) == len(PROFILE_FIELDS):
            fields.update(zip(PROFILE_FIELDS, profile, strict=True))
            try:
                records.append(msgspec.convert(fields, WireRecord))
                index.append(i)
                continue
            except msgspec.MsgspecError as exc:
                detail = _explain(exc)
        else:
            detail = f"profile: {code!r} is not the index of a profile of this message"
        rejected.append(
            Rejected(DeadLetterReason.INVALID_RECORD, detail, dead_letter_value(fields), i)
        )
    return Block.of_records(records, index), rejected


def _decode_v1(value: bytes) -> tuple[list[Any], list[int] | range, list[Rejected]]:
    """Version 1: (valid WireRecords, their positions, Rejected)."""
    not_envelope = f"not a v{SCHEMA_VERSION} record batch envelope"
    try:
        batch = _batch_decoder.decode(value)
    except msgspec.MsgspecError:
        pass
    else:
        if batch.v != SCHEMA_VERSION:
            return [], [], _undecodable(not_envelope, value)[1]
        return batch.records, range(len(batch.records)), []
    try:
        raw = _raw_batch_decoder.decode(value)
    except msgspec.ValidationError as exc:
        return [], [], _undecodable(f"{not_envelope}: {_explain(exc)}", value)[1]
    except msgspec.DecodeError as exc:
        return [], [], _undecodable(str(exc), value)[1]
    if raw.v != SCHEMA_VERSION:
        return [], [], _undecodable(not_envelope, value)[1]
    records: list[Any] = []
    index: list[int] = []
    rejected: list[Rejected] = []
    for i, item in enumerate(raw.records):
        try:
            records.append(_record_decoder.decode(item))
            index.append(i)
        except msgspec.MsgspecError as exc:
            detail = _explain(exc)
            rejected.append(
                Rejected(DeadLetterReason.INVALID_RECORD, detail, single_record_message(item), i)
            )
    return records, index, rejected


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

    def split(self, block: Block, now_ms: int) -> tuple[Block, list[Rejected]]:
        """(the block's reports inside the window, Rejected for the others). Per message: min
        and max run in C; only a message with a report outside is looked at report by
        report."""
        if not len(block):
            return block, []
        lo, hi = now_ms - self.back_ms, now_ms + self.ahead_ms
        oldest, newest = block.span()
        if lo <= oldest and newest <= hi:
            return block, []
        received = block.received
        keep = [lo <= at <= hi for at in received]
        rejected: list[Rejected] = []
        for row, inside in enumerate(keep):
            if inside:
                continue
            detail = (
                f"received_at_ms: {received[row]} is outside what is stored, "
                f"{lo} to {hi} (at most retention_days={self.back_ms // _DAY_MS} days old, "
                f"{self.ahead_ms // _DAY_MS} day ahead of this consumer's clock)"
            )
            value = dead_letter_value(block.record(row))
            rejected.append(
                Rejected(DeadLetterReason.INVALID_RECORD, detail, value, block.index[row])
            )
        return block.take(keep), rejected
