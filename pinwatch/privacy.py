"""What pinwatch keeps of a person: a keyed hash instead of the device id, a network prefix
instead of the address. Applied at ingest, so raw identifiers never reach Kafka."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from pydantic import SecretStr


class DeviceHasher:
    """HMAC-SHA256 of the device id under the settings' secret, truncated to 128 bits: stable
    per device (distinct-device counts work), useless without the key."""

    def __init__(self, key: SecretStr | str) -> None:
        secret = key.get_secret_value() if isinstance(key, SecretStr) else key
        self._key = secret.encode()

    def __call__(self, device_id: str) -> str:
        if not device_id:
            return ""
        return hmac.new(self._key, device_id.encode(), hashlib.sha256).hexdigest()[:32]


def network_prefix(address: str | None) -> str:
    """/24 for IPv4, /48 for IPv6 (IPv4-mapped IPv6 is treated as IPv4); '' when unknown."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
