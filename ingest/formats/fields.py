"""Typed reads from a decoded JSON report, shared by the TrustKit, HPKP and NEL parsers.

Every problem becomes a `BadReport` naming the dotted path of the field (`known-pins[2]`,
`[3].body.type`), so a client developer reading a 400 knows exactly what to fix. Real clients add
fields over the years, so nothing here complains about keys it was not asked for.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from typing import Any

import orjson

from ingest.formats.base import BadReport

# RFC 1123 labels (underscores too, which real DNS has); ports and paths are not hostnames.
_HOSTNAME = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]{1,63}$")
_PLAUSIBLE = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


class Fields:
    """A JSON object with the path it sits at, for error messages."""

    def __init__(self, value: Any, path: str, max_string: int) -> None:
        if not isinstance(value, dict):
            raise BadReport(path or "body", f"must be a JSON object, got {_type(value)}")
        self.data: dict[str, Any] = value
        self.path = path
        self.max_string = max_string

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def string(
        self, key: str, *, required: bool = False, default: str = "", limit: int | None = None
    ) -> str:
        value = self.data.get(key)
        if value is None:
            if required:
                raise BadReport(self.where(key), "required")
            return default
        if not isinstance(value, str):
            raise BadReport(self.where(key), f"must be a string, got {_type(value)}")
        most = limit or self.max_string
        if len(value) > most:
            raise BadReport(self.where(key), f"{len(value)} characters, at most {most}", 413)
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise BadReport(self.where(key), f"must be true or false, got {_type(value)}")
        return value

    def integer(self, key: str, *, lo: int, hi: int) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        # JSON has one number type: 443.0 is a fine port, 443.5 and true are not.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadReport(self.where(key), f"must be an integer, got {_type(value)}")
        if isinstance(value, float) and not value.is_integer():
            raise BadReport(self.where(key), f"must be an integer, got {value}")
        if not lo <= value <= hi:
            raise BadReport(self.where(key), f"{value} is outside {lo}..{hi}")
        return int(value)

    def number(self, key: str, *, lo: float, hi: float) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadReport(self.where(key), f"must be a number, got {_type(value)}")
        if not lo <= value <= hi:
            raise BadReport(self.where(key), f"{value} is outside {lo}..{hi}")
        return float(value)

    def array(self, key: str, *, limit: int) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadReport(self.where(key), f"must be an array, got {_type(value)}")
        if len(value) > limit:
            raise BadReport(self.where(key), f"{len(value)} entries, at most {limit}", 413)
        return value

    def obj(self, key: str) -> Fields:
        return Fields(self.data.get(key), self.where(key), self.max_string)

    def timestamp_ms(self, key: str) -> int | None:
        """RFC 3339 / ISO 8601 time as epoch milliseconds; null (iOS sends NSNull when its
        formatter fails) is None. A time without an offset is read as UTC."""
        text = self.string(key)
        if not text:
            return None
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise BadReport(self.where(key), f"not an ISO 8601 date-time: {text[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        if not _PLAUSIBLE[0] <= parsed < _PLAUSIBLE[1]:
            # A device clock decades off says nothing about when the event happened (and would
            # not fit a DateTime64); the report itself is still worth keeping.
            return None
        return int(parsed.timestamp() * 1000)


def hostname(value: str, field: str) -> str:
    """Lower-cased, trailing dot dropped; rejects anything that is not a DNS name or IP."""
    name = value.strip().lower().rstrip(".")
    if not name:
        raise BadReport(field, "required")
    if _HOSTNAME.match(name):
        return name
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        raise BadReport(field, f"not a hostname: {value[:64]!r}") from None


def content_id(fmt: str, *parts: Any) -> str:
    """A deterministic report id for formats that carry none: the same report retried by the
    client hashes to the same id, so consumers count it once."""
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{fmt}-{digest[:32]}"


def bounded_raw(value: Any, limit: int) -> str:
    """The payload as compact JSON for sampled evidence, cut at `limit` characters (a cut
    payload ends with `…[truncated]` so nobody mistakes it for the whole report)."""
    text = orjson.dumps(value).decode()
    if len(text) <= limit:
        return text
    marker = "…[truncated]"
    return text[: max(0, limit - len(marker))] + marker


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
