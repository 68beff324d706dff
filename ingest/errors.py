"""Ingest's errors in the one error shape (pinwatch/errors.py): what the request path raises, and
the statuses each report route documents."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ingest.metrics import Reason
from pinwatch.errors import ErrorBody, error_body


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
        return error_body(self.error, self.detail, self.field)


class ClientGone(ApiError):
    """The client closed the connection (or ingest closed it, having answered already, e.g.
    408) before its body arrived: nobody is left to answer, so nothing is counted."""

    def __init__(self) -> None:
        super().__init__(400, "bad_json", "the client went away before the body ended")


def read_timeout(seconds: float) -> ApiError:
    """408: a request's headers and body did not arrive in time (ingest/protocol.py)."""
    return ApiError(
        408,
        "timeout",
        f"the request's headers and body did not arrive within {seconds:g} s",
        reason=Reason.TIMEOUT,
    )


UPGRADE_REFUSED = ApiError(
    400,
    "bad_request",
    "ingest serves no protocol upgrade or tunnel (Upgrade/CONNECT); send the request as plain "
    "HTTP/1.1, without an Upgrade header",
    reason=Reason.BAD_REQUEST,
)
MALFORMED = ApiError(
    400,
    "bad_request",
    "not a valid HTTP/1.1 request (request line, headers or chunked body)",
    reason=Reason.BAD_REQUEST,
)
INTERNAL = ApiError(
    500,
    "internal",
    "ingest failed to answer; nothing of the request is known "
    "to be accepted, retry (report ids make retries safe)",
)


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
    400: _error(
        "Not JSON, or a field is missing, of the wrong type or invalid (`field` names it); or "
        "not HTTP ingest serves (`bad_request`: malformed, or asking for a protocol upgrade)."
    ),
    401: _error("Missing or unknown ingest key (header X-Pinwatch-Key or ?key=)."),
    408: _error(
        "The request's headers and body did not arrive within ingest_read_timeout_seconds of its "
        "first byte; the connection is closed."
    ),
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
