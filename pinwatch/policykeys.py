"""The policy signing keys as the settings name them: the signing key from
PINWATCH_POLICY_SIGNING_KEY (PEM text, a secret) or a file (default
data_dir/policy-signing-key.pem), plus the extra keys to publish during a rotation."""

from __future__ import annotations

from pinwatch.jose import JoseError, SigningKeys, load_private_key, load_public_key
from pinwatch.settings import Settings


class NoSigningKey(JoseError):
    """No signing key is configured, or it cannot be read: the message names the setting."""


def load_signing_keys(settings: Settings) -> SigningKeys:
    secret = settings.policy_signing_key.get_secret_value()
    if secret:
        signing = load_private_key(secret.encode(), "PINWATCH_POLICY_SIGNING_KEY")
    else:
        path = settings.policy_signing_key_path
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise NoSigningKey(
                f"no policy signing key: cannot read {path} ({exc.strerror}); set "
                "PINWATCH_POLICY_SIGNING_KEY_FILE or PINWATCH_POLICY_SIGNING_KEY (`pinwatch up` "
                "and `pinwatch demo` create one in the data directory)"
            ) from None
        signing = load_private_key(pem, str(path))
    extra = []
    for path in settings.policy_extra_public_key_files:
        try:
            extra.append(load_public_key(path.read_bytes(), str(path)))
        except OSError as exc:
            raise NoSigningKey(
                f"PINWATCH_POLICY_EXTRA_PUBLIC_KEY_FILES: cannot read {path} ({exc.strerror})"
            ) from None
    return SigningKeys.of(signing, extra)
