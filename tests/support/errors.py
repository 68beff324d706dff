"""The one error shape (pinwatch/errors.py) as tests check it."""

from __future__ import annotations

import httpx


def assert_error(response: httpx.Response, status: int, error: str, field: str | None) -> str:
    """The answer is `status` in the error shape with this code and field; returns the detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "field", "detail"}, body
    assert (body["error"], body["field"]) == (error, field), body
    assert isinstance(body["detail"], str) and body["detail"]
    return body["detail"]
