"""Choosing logs from a log list in the JSON v3 format (the one Chrome and Apple publish):
`operators[].logs[]`, each with `description`, `log_id` (base64 SHA-256 of `key`), `key`
(base64 DER SubjectPublicKeyInfo), `url`, `mmd` and a `state` object whose single key is the
state (pending, qualified, usable, readonly, retired, rejected).

Followed: logs in states qualified, usable and readonly (readonly logs take no new entries but
may still hold unread ones); `only` narrows to given URLs. Every problem is a LogListError
naming the log and field."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

FOLLOWED_STATES = frozenset({"qualified", "usable", "readonly"})


class LogListError(ValueError):
    pass


@dataclass(frozen=True)
class Log:
    url: str  # ends with "/"; the API is at url + "ct/v1/..."
    description: str
    log_id: str  # base64
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    state: str

    @property
    def state_name(self) -> str:
        """A file name for this log's state: the log id, URL-safe."""
        return base64.urlsafe_b64encode(base64.b64decode(self.log_id)).decode().rstrip("=")


def parse_log_list(text: str, source: str, only: list[str] | None = None) -> list[Log]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LogListError(f"{source}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("operators"), list):
        raise LogListError(f"{source}: not a v3 log list (no `operators` list)")
    logs = []
    for operator in data["operators"]:
        for raw in (operator or {}).get("logs") or []:
            log = _log(raw, source)
            if log is not None:
                logs.append(log)
    wanted = {_slash(u) for u in only or []}
    if wanted:
        missing = wanted - {log.url for log in logs}
        if missing:
            raise LogListError(
                f"{source}: no followable log at {', '.join(sorted(missing))} (ct_logs names "
                "a log the list does not hold, or one that is retired, rejected or pending)"
            )
        logs = [log for log in logs if log.url in wanted]
    return logs


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _log(raw: Any, source: str) -> Log | None:
    if not isinstance(raw, dict):
        raise LogListError(f"{source}: a log entry is not an object")
    name = raw.get("description") or raw.get("url") or "?"
    states = raw.get("state") or {}
    state = next(iter(states), "") if isinstance(states, dict) else ""
    if state not in FOLLOWED_STATES:
        return None
    url = raw.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise LogListError(f"{source}: log {name!r} has no http(s) `url`")
    try:
        der = base64.b64decode(raw.get("key") or "", validate=True)
        key = load_der_public_key(der)
    except (binascii.Error, ValueError) as exc:
        raise LogListError(f"{source}: log {name!r}: `key` is not a public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise LogListError(f"{source}: log {name!r}: key is neither ECDSA nor RSA")
    log_id = base64.b64encode(hashlib.sha256(der).digest()).decode()
    if raw.get("log_id") and raw["log_id"] != log_id:
        raise LogListError(f"{source}: log {name!r}: `log_id` is not the SHA-256 of its key")
    return Log(_slash(url), str(name), log_id, key, state)
