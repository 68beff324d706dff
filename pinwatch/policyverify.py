"""The reference verifier of a signed policy document: what every client must check before it
obeys one, in the order it must check it. The simulator's devices and the tests use it; the
Swift and Kotlin versions in docs/remote-policy.md follow it step by step.

1. The JWS is compact, `alg` EdDSA, and its `kid` names a key of the JWK Set the client
   trusts (fetched from /v1/policy/keys, or shipped in the app): else `unknown_kid`.
2. The Ed25519 signature verifies over the header and payload: else `tampered`.
3. The payload is for this app: else `wrong_app`.
4. `exp` is in the future: else `expired` (the client keeps its last valid document, or its
   built-in defaults, never an expired one).
5. `version` is not lower than the highest version this client accepted: else
   `older_version` (a replayed old document cannot undo a kill switch).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from pinwatch.jose import BadSignature, JoseError, UnknownKey, keys_of_jwk_set, verify_compact


class PolicyRejected(ValueError):
    """`reason`: unknown_kid, tampered, malformed, wrong_app, expired or older_version."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class PolicyVerifier:
    """One client's view: the keys it trusts, its app, and the highest version it accepted."""

    def __init__(self, jwks: dict[str, Any], app: str, last_version: int | None = None) -> None:
        self.keys = keys_of_jwk_set(jwks)
        self.app = app
        self.last_version = last_version

    def verify(self, token: str, now: float | None = None) -> dict[str, Any]:
        """The document's claims once every check passed; raises `PolicyRejected`."""
        try:
            verified = verify_compact(token.strip(), self.keys)
        except UnknownKey as exc:
            raise PolicyRejected("unknown_kid", str(exc)) from None
        except BadSignature as exc:
            raise PolicyRejected("tampered", str(exc)) from None
        except JoseError as exc:
            raise PolicyRejected("malformed", str(exc)) from None
        try:
            claims = orjson.loads(verified.payload)
        except orjson.JSONDecodeError:
            raise PolicyRejected("malformed", "the payload is not JSON") from None
        if not isinstance(claims, dict):
            raise PolicyRejected("malformed", "the payload is not a JSON object")
        if claims.get("app") != self.app:
            raise PolicyRejected("wrong_app", f"issued for {claims.get('app')!r}, not {self.app}")
        exp, version = claims.get("exp"), claims.get("version")
        if not isinstance(exp, int) or not isinstance(version, int):
            raise PolicyRejected("malformed", "exp and version must be integers")
        now = time.time() if now is None else now
        if exp <= now:
            raise PolicyRejected("expired", f"expired {now - exp:.0f} s ago (exp {exp})")
        if self.last_version is not None and version < self.last_version:
            raise PolicyRejected(
                "older_version",
                f"version {version} is older than version {self.last_version} already accepted",
            )
        self.last_version = version
        return claims
