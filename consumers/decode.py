"""Decode step: a Kafka message (pinwatch.record's batch envelope) into validated record dicts.

The consumer works on the plain dicts orjson returns instead of `Record` objects: building a
25-field dataclass per report costs more than parsing the JSON and classifying it together, and
the consumer needs nothing from the object but its fields. The checks are those of
`Record.from_dict` (known fields, required fields, enum values) plus the field types, since a
wrongly typed value would otherwise fail the whole batch's insert instead of one record.
Each record is checked on its own, so one bad record does not sink its batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from pinwatch.record import SCHEMA_VERSION, ErrorCategory, Format, Kind, Record, Result

_NONE = type(None)
# Field -> accepted Python types (JSON gives str, int, bool, list, None).
_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "app_id": (str,),
    "host": (str,),
    "received_at_ms": (int,),
    "event_at_ms": (int, _NONE),
    "sent_at_ms": (int, _NONE),
    "app_version": (str,),
    "platform": (str,),
    "os_version": (str,),
    "device": (str,),
    "network": (str,),
    "client_network": (str,),
    "port": (int,),
    "count": (int,),
    "enforced": (bool, _NONE),
    "observed_pins": (list,),
    "known_pins": (list,),
    "served_chain": (list,),
    "detail": (str,),
    "raw": (str,),
    "schema": (int,),
}
_ENUMS: dict[str, frozenset[str]] = {
    "kind": frozenset(k.value for k in Kind),
    "format": frozenset(f.value for f in Format),
    "result": frozenset(r.value for r in Result),
    "error": frozenset(e.value for e in ErrorCategory),
}
_LISTS = ("observed_pins", "known_pins", "served_chain")
_FIELDS = frozenset(f.name for f in dataclasses.fields(Record))
_REQUIRED = tuple(
    f.name
    for f in dataclasses.fields(Record)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
_OPTIONAL_ENUMS = ("result", "error")
_UINT32_MAX = 2**32 - 1


def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Record):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default.value if hasattr(f.default, "value") else f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


DEFAULTS: dict[str, Any] = _defaults()  # lists here are shared: never mutate a record's lists


class InvalidRecord(ValueError):
    pass


_KINDS, _FORMATS = _ENUMS["kind"], _ENUMS["format"]
_RESULTS, _ERRORS = _ENUMS["result"], _ENUMS["error"]
_STR_ONLY = {str}
# Record shapes (field names and value types, in order) already checked in full. Ingest writes
# every record through the same dataclass, so real traffic has a handful of shapes and the
# per-field type checks run once per shape instead of once per record.
_GOOD_SHAPES: set[tuple[tuple[str, ...], tuple[type, ...]]] = set()
_MAX_SHAPES = 4096


def check_record(item: Any) -> dict[str, Any]:
    """The record with defaults filled in, or InvalidRecord naming the field."""
    if not isinstance(item, dict):
        raise InvalidRecord("record is not an object")
    shape = (tuple(item), tuple(map(type, item.values())))
    if shape not in _GOOD_SHAPES:
        _check_shape(item)
        if len(_GOOD_SHAPES) < _MAX_SHAPES:
            _GOOD_SHAPES.add(shape)
    # values, checked on every record
    if item["kind"] not in _KINDS:
        raise InvalidRecord(f"kind: {str(item['kind'])[:40]!r} is not one of {sorted(_KINDS)}")
    if item["format"] not in _FORMATS:
        raise InvalidRecord(
            f"format: {str(item['format'])[:40]!r} is not one of {sorted(_FORMATS)}"
        )
    result = item.get("result")
    if result is not None and result not in _RESULTS:
        raise InvalidRecord(f"result: {str(result)[:40]!r} is not one of {sorted(_RESULTS)}")
    error = item.get("error")
    if error is not None and error not in _ERRORS:
        raise InvalidRecord(f"error: {str(error)[:40]!r} is not one of {sorted(_ERRORS)}")
    for name in _LISTS:
        value = item.get(name)
        if value and not set(map(type, value)) <= _STR_ONLY:
            raise InvalidRecord(f"{name}: expected strings")
    if not 0 <= item.get("count", 1) <= _UINT32_MAX:
        raise InvalidRecord(f"count: {item['count']} out of range")
    if not 0 <= item.get("port", 443) <= 65535:
        raise InvalidRecord(f"port: {item['port']} out of range")
    if len(item) == len(_FIELDS):
        return item
    record = DEFAULTS.copy()
    record.update(item)
    return record


def _check_shape(item: dict[str, Any]) -> None:
    if not item.keys() <= _FIELDS:
        raise InvalidRecord(f"unknown fields: {sorted(item.keys() - _FIELDS)}")
    for name in _REQUIRED:
        if name not in item:
            raise InvalidRecord(f"{name}: missing")
    for name, value in item.items():
        types = _TYPES.get(name)
        if types is not None and not isinstance(value, types):
            raise InvalidRecord(f"{name}: expected {types[0].__name__}, got {type(value).__name__}")
        if name in _ENUMS and not isinstance(value, str | _NONE):
            raise InvalidRecord(f"{name}: expected a string")


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
    """A one-record envelope, so a dead letter can be replayed onto the main topic as is."""
    return orjson.dumps({"v": SCHEMA_VERSION, "records": [item]})


def decode(value: bytes | None) -> tuple[list[dict[str, Any]], list[Rejected]]:
    value = value or b""
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [], [Rejected(DeadLetterReason.UNDECODABLE_MESSAGE, str(exc), value, None)]
    if not isinstance(envelope, dict) or envelope.get("v") != SCHEMA_VERSION:
        detail = f"not a v{SCHEMA_VERSION} record batch envelope"
        return [], [Rejected(DeadLetterReason.UNDECODABLE_MESSAGE, detail, value, None)]
    items = envelope.get("records")
    if not isinstance(items, list):
        detail = "envelope has no `records` list"
        return [], [Rejected(DeadLetterReason.UNDECODABLE_MESSAGE, detail, value, None)]
    records: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    for i, item in enumerate(items):
        try:
            records.append(check_record(item))
        except (InvalidRecord, TypeError) as exc:
            rejected.append(
                Rejected(DeadLetterReason.INVALID_RECORD, str(exc), single_record_message(item), i)
            )
    return records, rejected
