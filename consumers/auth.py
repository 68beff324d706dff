"""The admin bearer token every admin route of the consumer's API requires (the rollout query
API, the live policy levers)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pinwatch.errors import HTTPError

_bearer = HTTPBearer(auto_error=False)


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 without a bearer token, 403 with a wrong one (compared in constant time)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPError(
            401,
            "admin bearer token required",
            field="Authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = request.app.state.settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise HTTPError(403, "admin token not accepted", field="Authorization")
