"""The one error shape every ingest answer uses, and the statuses each report route documents."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, Field

from pinwatch.errors import ErrorBody as ErrorBody  # the shape every pinwatch API shares


class RejectedItem(BaseModel):
    index: int = Field(description="Position of the item in the batch.")
    field: str
    detail: str


class AcceptedBody(BaseModel):
    accepted: int = Field(description="Reports acknowledged by Kafka.")
    rejected: list[RejectedItem] = Field(
        default_factory=list,
        description="Items refused individually (only formats whose items are independent).",
    )


class ApiError(Exception):
    """Raised anywhere on the request path; the route turns it into one `ErrorBody` answer."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        field: str | None = None,
        retry_after: int | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field
        self.retry_after = retry_after
        self.reason = reason  # pinwatch_ingest_rejected_total's label

    def body(self) -> bytes:
        return orjson.dumps({"error": self.error, "field": self.field, "detail": self.detail})


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {"model": ErrorBody, "description": description}
    if retry_after:
        answer["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before sending again.",
                "schema": {"type": "integer"},
            }
        }
    return answer


REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": AcceptedBody, "description": "Every report is on Kafka (acknowledged)."},
    400: _error("Not JSON, or a field is missing, of the wrong type or invalid; `field` names it."),
    401: _error("Missing or unknown ingest key (header X-Pinwatch-Key or ?key=)."),
    413: _error(
        "Body larger than max_body_bytes (as sent) or max_decompressed_bytes (after gzip), or a "
        "count/length limit exceeded (reports, pins, certificates, certificate size, strings)."
    ),
    415: _error("Content-Type not accepted by this route, or Content-Encoding not identity/gzip."),
    429: _error("This app exceeded its request rate; retry after Retry-After.", retry_after=True),
    503: _error(
        "Kafka is down or did not acknowledge in time; nothing was accepted, retry after "
        "Retry-After (report ids make retries safe).",
        retry_after=True,
    ),
}
