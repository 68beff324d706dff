"""The contract between the HTTP layer and each input format.

The HTTP layer (ingest/app.py) authenticates, enforces size limits, decompresses and parses the
JSON, then hands the parsed document to the format's `parse`, which returns normalized
`Record`s and, for batch formats whose items are independent (NEL), the items it rejected.
A format raises `BadReport` to reject the whole request with a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from pinwatch.policy import Policy
from pinwatch.record import Record
from pinwatch.settings import Settings


class BadReport(ValueError):
    """400: `field` is a dotted path into the request body, `problem` says what is wrong."""

    def __init__(self, field: str, problem: str, status: int = 400) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.status = status  # 413 for "too many"/"too long" limits


@dataclass(frozen=True)
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


# parse(document, ctx) -> Parsed; document is the decoded JSON value (dict or list).
Parser = Callable[[Any, IngestContext], Parsed]


@dataclass(frozen=True)
class FormatSpec:
    name: str  # Format value, also the label on ingest metrics
    path: str  # e.g. "/v1/reports/trustkit"
    content_types: tuple[str, ...]  # accepted media types (parameters like charset ignored)
    parse: Parser
    summary: str = ""
    # The request body's pydantic model for these settings' limits, for the OpenAPI document
    # (optional: formats without one are documented as a plain JSON object).
    request_model: Callable[[Settings], type[BaseModel]] | None = None
