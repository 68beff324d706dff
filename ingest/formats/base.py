"""The contract between the HTTP layer and each input format.

The HTTP layer (ingest/app.py) authenticates, enforces size limits and decompresses, the format's
`decode` turns the body into a document (JSON values by default; the native format decodes
straight into its typed Structs), and the format's `parse` makes normalized `Record`s of that
document and, for batch formats whose items are independent (NEL), lists the items it rejected.
A format raises `BadReport` to reject the whole request with a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pinwatch.policy import Policy
from pinwatch.record import Record
from pinwatch.settings import Settings


class NotJson(ValueError):
    """400 bad_json: the body is not JSON at all (the message says where it breaks)."""


class BadReport(ValueError):
    """400: `field` is a dotted path into the request body, `problem` says what is wrong."""

    def __init__(self, field: str, problem: str, status: int = 400) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.status = status  # 413 for "too many"/"too long" limits


# Not frozen: a frozen dataclass sets each field through object.__setattr__, and one context is
# built per request (1.1 vs 0.4 us, a tenth of a single-report request's own work).
@dataclass(slots=True)
class IngestContext:
    app_id: str  # the app the ingest key belongs to: the trusted identity
    received_at_ms: int
    client_network: str  # already truncated (pinwatch.privacy.network_prefix)
    hash_device: Callable[[str], str]  # pinwatch.privacy.DeviceHasher
    settings: Settings  # the limits (max_* fields) live here
    policy: Policy
    user_agent: str = ""


@dataclass
class Rejection:
    index: int
    field: str
    problem: str


@dataclass
class Parsed:
    records: list[Record]
    rejected: list[Rejection] = field(default_factory=list)


# parse(document, ctx) -> Parsed; document is what the format's `decode` made of the body.
Parser = Callable[[Any, IngestContext], Parsed]
# decode(body, settings) -> document; raises NotJson, or BadReport for a typed decoder.
Decoder = Callable[[bytes, Settings], Any]


def decode_json(body: bytes, settings: Settings) -> Any:
    """The default decoder: any JSON value, for parsers that read it with `fields.Fields`."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise NotJson(str(exc)) from None


@dataclass(frozen=True)
class FormatSpec:
    name: str  # Format value, also the label on ingest metrics
    path: str  # e.g. "/v1/reports/trustkit"
    content_types: tuple[str, ...]  # accepted media types (parameters like charset ignored)
    parse: Parser
    decode: Decoder = decode_json
    summary: str = ""
    # The request body's JSON schema for these settings' limits, for the OpenAPI document:
    # (name of the body's schema, every component schema by name). Optional: formats without
    # one are documented as a plain JSON object.
    request_schema: Callable[[Settings], tuple[str, dict[str, Any]]] | None = None
