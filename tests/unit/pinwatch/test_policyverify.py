"""The reference verifier rejects what a client must never obey: a tampered payload, an
unknown kid, an expired document, an older version than one already accepted, another app's
document."""

from __future__ import annotations

import time

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pinwatch.jose import SigningKeys, b64url, sign_compact
from pinwatch.policyverify import PolicyRejected, PolicyVerifier

APP = "com.acme.app"
KEY = Ed25519PrivateKey.generate()
JWKS = SigningKeys.of(KEY).jwk_set()


def signed(key: Ed25519PrivateKey = KEY, **claims: object) -> str:
    body = {"app": APP, "version": 3, "iat": int(time.time()), "exp": int(time.time()) + 600}
    return sign_compact(orjson.dumps({**body, **claims}), key)


def rejected(verifier: PolicyVerifier, token: str, reason: str) -> None:
    with pytest.raises(PolicyRejected) as caught:
        verifier.verify(token)
    assert caught.value.reason == reason, caught.value


def test_a_good_document_is_accepted_and_its_version_remembered() -> None:
    verifier = PolicyVerifier(JWKS, APP)
    assert verifier.verify(signed(version=7))["version"] == 7
    assert verifier.last_version == 7
    assert verifier.verify(signed(version=7))["version"] == 7  # re-issued: same version is fine


def test_a_tampered_payload_is_rejected() -> None:
    head, _, sig = signed(kill_switch=True).split(".")
    altered = b64url(orjson.dumps({"app": APP, "version": 3, "exp": 2**40, "kill_switch": False}))
    rejected(PolicyVerifier(JWKS, APP), f"{head}.{altered}.{sig}", "tampered")


def test_an_unknown_kid_is_rejected() -> None:
    rejected(PolicyVerifier(JWKS, APP), signed(key=Ed25519PrivateKey.generate()), "unknown_kid")


def test_an_expired_document_is_rejected() -> None:
    rejected(PolicyVerifier(JWKS, APP), signed(exp=int(time.time()) - 1), "expired")


def test_an_older_version_than_one_seen_is_rejected() -> None:
    verifier = PolicyVerifier(JWKS, APP)
    verifier.verify(signed(version=9))
    rejected(verifier, signed(version=8), "older_version")
    assert verifier.last_version == 9


def test_another_apps_document_and_garbage_are_rejected() -> None:
    verifier = PolicyVerifier(JWKS, APP)
    rejected(verifier, signed(app="com.acme.web"), "wrong_app")
    rejected(verifier, "not-a-jws", "malformed")
    rejected(verifier, sign_compact(b"[1]", KEY), "malformed")
    rejected(verifier, signed(version="3"), "malformed")
