"""Compact JWS with EdDSA, OKP JWKs and thumbprints, checked against RFC 8037's own example
(Appendix A) so pinwatch's signatures are what any conforming JOSE library produces."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pinwatch.jose import (
    BadSignature,
    JoseError,
    SigningKeys,
    UnknownKey,
    b64url,
    b64url_decode,
    create_key_file,
    keys_of_jwk_set,
    load_public_key,
    public_jwk,
    public_pem,
    sign_compact,
    verify_compact,
)

# RFC 8037 Appendix A.1, A.2, A.3 and A.4.
RFC_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC_JWS = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)


def rfc_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC_D))


def test_the_rfc_8037_key_gives_its_jwk_and_thumbprint() -> None:
    jwk = public_jwk(rfc_key().public_key())
    assert (jwk["kty"], jwk["crv"], jwk["x"]) == ("OKP", "Ed25519", RFC_X)
    assert jwk["kid"] == RFC_THUMBPRINT


def test_the_rfc_8037_signature_is_reproduced() -> None:
    header_payload, _, signature = RFC_JWS.rpartition(".")
    assert b64url(rfc_key().sign(header_payload.encode())) == signature


def test_sign_then_verify_with_the_published_set() -> None:
    key = Ed25519PrivateKey.generate()
    keys = keys_of_jwk_set(SigningKeys.of(key).jwk_set())
    token = sign_compact(b'{"a":1}', key)
    verified = verify_compact(token, keys)
    assert verified.payload == b'{"a":1}'
    assert verified.header == {
        "alg": "EdDSA",
        "kid": public_jwk(key.public_key())["kid"],
        "typ": "pinwatch-policy+jws",
    }


def test_a_changed_payload_another_key_and_odd_headers_are_refused() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = SigningKeys.of(key).published
    token = sign_compact(b'{"kill_switch":true}', key)
    head, _, sig = token.split(".")
    altered = b64url(b'{"kill_switch":false}')
    with pytest.raises(BadSignature):
        verify_compact(f"{head}.{altered}.{sig}", keys)
    with pytest.raises(UnknownKey):
        verify_compact(sign_compact(b"{}", other), keys)
    none_alg = b64url(b'{"alg":"none","kid":"x"}')
    with pytest.raises(JoseError, match="alg must be EdDSA"):
        verify_compact(f"{none_alg}.{b64url(b'{}')}.", keys)
    kid = public_jwk(key.public_key())["kid"]
    jku = b64url(f'{{"alg":"EdDSA","kid":"{kid}","jku":"https://evil"}}'.encode())
    with pytest.raises(JoseError, match="jku"):
        verify_compact(f"{jku}.{b64url(b'{}')}.{sig}", keys)
    with pytest.raises(JoseError, match="three"):
        verify_compact("a.b", keys)


def test_a_jwk_set_with_a_private_key_or_a_false_kid_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    jwk = public_jwk(key.public_key())
    with pytest.raises(JoseError, match="private"):
        keys_of_jwk_set({"keys": [{**jwk, "d": "secret"}]})
    with pytest.raises(JoseError, match="thumbprint"):
        keys_of_jwk_set({"keys": [{**jwk, "kid": "chosen-by-attacker"}]})
    with pytest.raises(JoseError, match="OKP Ed25519"):
        keys_of_jwk_set({"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]})


def test_rotation_publishes_both_keys_and_signs_with_the_first(tmp_path) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = SigningKeys.of(new, [old.public_key()])
    assert list(keys.published) == [keys.kid, public_jwk(old.public_key())["kid"]]
    published = keys_of_jwk_set(keys.jwk_set())
    verify_compact(sign_compact(b"{}", old), published)  # documents signed before the switch
    verify_compact(sign_compact(b"{}", new), published)


def test_key_files_are_created_once_private_and_read_back(tmp_path) -> None:
    path = tmp_path / "keys" / "signing.pem"
    assert create_key_file(path) is True
    first = path.read_bytes()
    assert create_key_file(path) is False and path.read_bytes() == first
    assert path.stat().st_mode & 0o777 == 0o600
    public = load_public_key(first, str(path))  # a private key publishes its public half
    assert (
        load_public_key(public_pem(public), "pem").public_bytes_raw() == public.public_bytes_raw()
    )
    with pytest.raises(JoseError, match="not a PEM"):
        load_public_key(b"junk", "junk.pem")
