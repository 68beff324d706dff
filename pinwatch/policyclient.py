"""A client of the live policy's admin API (consumers/policy/api.py, admin token): what
`pinwatch policy` and the demo pull the levers with."""

from __future__ import annotations

import getpass
import socket
from dataclasses import asdict
from typing import Any

import httpx

from pinwatch.livepolicy import Change
from pinwatch.settings import Settings

PREFIX = "/v1/admin/policy"


class AdminError(RuntimeError):
    """The owner refused (`status` 4xx: bad input, named) or could not be reached (0, 5xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def refused(self) -> bool:
        return 400 <= self.status < 500


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class PolicyAdmin:
    def __init__(self, settings: Settings, base_url: str | None = None) -> None:
        self.base_url = (base_url or settings.policy_owner).rstrip("/")
        self.token = settings.admin_token.get_secret_value()
        self.timeout = settings.policy_owner_timeout_seconds

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base_url}{PREFIX}{path}"
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            response = httpx.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise AdminError(
                0,
                f"cannot reach the policy owner at {self.base_url} ({type(exc).__name__}: {exc}); "
                "is `pinwatch up` (or `pinwatch consume`) running? PINWATCH_POLICY_OWNER_URL "
                "names it",
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail") or response.text
            except ValueError:
                detail = response.text
            raise AdminError(response.status_code, str(detail)[:1000])
        return response.json()

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/state")

    def change(self, change: Change) -> dict[str, Any]:
        return self._call("POST", "/changes", json=asdict(change))

    def history(
        self, limit: int = 50, app: str | None = None, host: str | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if app:
            params["app"] = app
        if host:
            params["host"] = host
        return self._call("GET", "/history", params=params)
