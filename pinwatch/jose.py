"""The few pieces of JOSE the signed policy document needs, written out: compact JWS (RFC 7515
section 7.1) with `alg` EdDSA over Ed25519 keys (RFC 8037), public keys as OKP JWKs in a JWK Set
(RFC 7517), and each key's `kid` its JWK thumbprint (RFC 7638).

Why by hand: one algorithm, one key type and one serialization are about a hundred lines on
`cryptography`'s Ed25519 (already a dependency), checked against RFC 8037's own example
(tests/unit/pinwatch/test_jose.py); a general JOSE library would add algorithm negotiation that
a verifier then has to switch off. What is accepted is narrow on purpose: a protected header of
exactly `alg` EdDSA, `kid` and optionally `typ`; no `crit`, `jku`, `jwk` or `x5u` (a document
must never tell its verifier where to find its key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG = "EdDSA"
TYP = "pinwatch-policy+jws"
_HEADER_KEYS = {"alg", "kid", "typ"}


class JoseError(ValueError):
    """A JWS, JWK or key file that is not what pinwatch signs or accepts; says what is wrong."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding (RFC 7515 section 2): no `=`, no other alphabet."""
    if "=" in text or not text.isascii():
        raise JoseError("not base64url without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JoseError(f"not base64url: {exc}") from None


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_jwk(public: Ed25519PublicKey) -> dict[str, str]:
    """The OKP JWK of an Ed25519 public key (RFC 8037 section 2), with its `kid`."""
    x = b64url(_raw(public))
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": thumbprint(x), "alg": ALG, "use": "sig"}


def thumbprint(x: str) -> str:
    """RFC 7638 thumbprint of an OKP Ed25519 key: SHA-256 of the required members in
    lexicographic order without whitespace, base64url."""
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return b64url(hashlib.sha256(canonical.encode()).digest())


def jwk_public_key(jwk: dict[str, Any]) -> Ed25519PublicKey:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise JoseError("only OKP Ed25519 keys are accepted (kty OKP, crv Ed25519)")
    if "d" in jwk:
        raise JoseError("a JWK Set of verification keys must not carry a private key (d)")
    raw = b64url_decode(str(jwk.get("x", "")))
    if len(raw) != 32:
        raise JoseError("an Ed25519 public key (x) is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def jwk_set(keys: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    return {"keys": [public_jwk(key) for key in keys.values()]}


def keys_of_jwk_set(data: dict[str, Any]) -> dict[str, Ed25519PublicKey]:
    """kid -> public key; the kid is recomputed from the key, never trusted as sent."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JoseError("a JWK Set is an object with a `keys` list")
    out = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict):
            raise JoseError("every member of `keys` is a JWK object")
        key = jwk_public_key(jwk)
        kid = thumbprint(b64url(_raw(key)))
        if jwk.get("kid") not in (None, kid):
            raise JoseError(f"kid {jwk.get('kid')!r} is not the key's thumbprint {kid}")
        out[kid] = key
    return out


def sign_compact(payload: bytes, key: Ed25519PrivateKey) -> str:
    """`BASE64URL(header).BASE64URL(payload).BASE64URL(signature)`, the header naming the
    signing key's thumbprint as `kid`."""
    kid = public_jwk(key.public_key())["kid"]
    header = orjson.dumps({"alg": ALG, "kid": kid, "typ": TYP})
    signing_input = f"{b64url(header)}.{b64url(payload)}".encode("ascii")
    return f"{signing_input.decode('ascii')}.{b64url(key.sign(signing_input))}"


@dataclass(frozen=True)
class Verified:
    kid: str
    header: dict[str, Any]
    payload: bytes


class UnknownKey(JoseError):
    """The JWS names a `kid` that is not in the verifier's key set."""


class BadSignature(JoseError):
    """The signature does not match the header and payload (tampered, or another key)."""


def verify_compact(token: str, keys: dict[str, Ed25519PublicKey]) -> Verified:
    """Check a compact JWS against `keys` (kid -> key) and return its payload. Raises
    `UnknownKey`, `BadSignature` or `JoseError` (malformed, wrong algorithm)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError("a compact JWS has three dot-separated parts")
    try:
        header = orjson.loads(b64url_decode(parts[0]))
    except orjson.JSONDecodeError:
        raise JoseError("the protected header is not JSON") from None
    if not isinstance(header, dict):
        raise JoseError("the protected header is not a JSON object")
    if header.get("alg") != ALG:
        raise JoseError(f"alg must be {ALG}, not {header.get('alg')!r}")
    extra = set(header) - _HEADER_KEYS
    if extra:
        raise JoseError(f"header parameters not accepted: {', '.join(sorted(extra))}")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise UnknownKey(f"unknown kid {kid!r}: not in the published key set")
    signature = b64url_decode(parts[2])
    try:
        keys[kid].verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        raise BadSignature("signature does not verify: the document was altered") from None
    return Verified(kid, header, b64url_decode(parts[1]))


# --- key files ---------------------------------------------------------------------------------


def load_private_key(pem: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise JoseError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise JoseError(f"{source}: an Ed25519 key is needed, not {type(key).__name__}")
    return key


def load_public_key(pem: bytes, source: str) -> Ed25519PublicKey:
    """A published key from PEM: a public key, or a private key whose public half is meant."""
    if b"PRIVATE KEY" in pem:
        return load_private_key(pem, source).public_key()
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise JoseError(f"{source}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise JoseError(f"{source}: an Ed25519 key is needed, not {type(key).__name__}")
    return key


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def create_key_file(path: Path) -> bool:
    """Write a new Ed25519 signing key to `path` (mode 0600) unless one is there; True when
    created. O_EXCL: two processes starting at once cannot both write one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem(Ed25519PrivateKey.generate()))
    return True


@dataclass(frozen=True)
class SigningKeys:
    """The key documents are signed with, and every key verifiers should accept (the signing
    key first). Two at once is the rotation: publish the next key beside the current one,
    then sign with it while the previous stays published until documents it signed expire."""

    signing: Ed25519PrivateKey
    published: dict[str, Ed25519PublicKey]

    @property
    def kid(self) -> str:
        return public_jwk(self.signing.public_key())["kid"]

    @classmethod
    def of(cls, signing: Ed25519PrivateKey, extra: Iterable[Ed25519PublicKey] = ()) -> SigningKeys:
        keys = [signing.public_key(), *extra]
        published = {public_jwk(k)["kid"]: k for k in keys}
        return cls(signing, published)

    def jwk_set(self) -> dict[str, Any]:
        return jwk_set(self.published)
