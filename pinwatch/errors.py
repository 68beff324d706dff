"""The one error shape of every pinwatch HTTP API (ingest and the consumer's query API):
`{"error", "field", "detail"}`, and the FastAPI handlers that give it to the answers the
framework writes itself (404, 405, a failed parameter validation, any HTTPException).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

JSON = "application/json"


class ErrorBody(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: str = Field(
        description="Machine-readable code. Ingest: unauthorized, unsupported_media_type, "
        "too_large, bad_json, bad_report, bad_request (not HTTP ingest serves: malformed, or "
        "asking for a protocol upgrade), timeout, rate_limited, unavailable, not_ready. Query "
        "API: bad_request, unauthorized, forbidden, conflict (a policy change that changes "
        "nothing or lost a race), unavailable, not_ready. Policy edge: unavailable (no signing "
        "key, no live state yet). Both: not_found, "
        "method_not_allowed, internal.",
        examples=["bad_report"],
    )
    field: str | None = Field(
        None,
        description="The offending value: a path into the request body, or the name of a "
        "query or path parameter; null when no one value is at fault.",
        examples=["reports[3].observed_pins[0]"],
    )
    detail: str = Field(
        description="What is wrong, for a human.",
        examples=["must be the base64 SHA-256 of a SubjectPublicKeyInfo (32 bytes)"],
    )


# The code of an answer that does not name one, by status.
ERRORS_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


class HTTPError(HTTPException):
    """An HTTPException that names its code and the offending field."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        error: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, detail, headers=headers)
        self.error = error or ERRORS_BY_STATUS.get(status, "error")
        self.field = field


def error_body(error: str, detail: str, field: str | None = None) -> bytes:
    """An `ErrorBody` as JSON bytes."""
    return orjson.dumps({"error": error, "field": field, "detail": detail})


def error_response(
    status: int,
    error: str,
    detail: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(error_body(error, detail, field), status, headers=headers, media_type=JSON)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    error = getattr(exc, "error", None) or ERRORS_BY_STATUS.get(status, "error")
    detail = str(exc.detail)
    if not isinstance(exc, HTTPError):  # the router's own words, with what was asked
        if status == 404:
            detail = f"no route {request.url.path[:200]}"
        elif status == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            detail = f"{request.method} is not served at {request.url.path[:200]} (only {allowed})"
    return error_response(status, error, detail, getattr(exc, "field", None), exc.headers)


def _parameter(loc: tuple[Any, ...]) -> str:
    """A validation error's location as the caller wrote it: `since`, `reports[0].id`."""
    parts = loc[1:] if loc and loc[0] in ("query", "path", "header", "cookie", "body") else loc
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = _parameter(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value"))
    return error_response(400, "bad_request", f"{field}: {message}" if field else message, field)


async def _failed(request: Request, exc: Exception) -> Response:
    # A bug, not input: the traceback goes to the log (Starlette's ServerErrorMiddleware logs it
    # as it calls this), the client gets the shape, not Starlette's plain text.
    return error_response(
        500,
        "internal",
        "the server failed to answer; nothing of the request is known to be done, retry",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every HTTPException (those FastAPI raises for 404 and 405 included), every failed
    request validation (FastAPI's 422, a 400 here) and any unexpected exception (500) answer in
    the error shape."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _failed)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting error statuses with the ErrorBody model."""
    return {
        s: {"model": ErrorBody, "description": ERRORS_BY_STATUS.get(s, "error")} for s in statuses
    }
