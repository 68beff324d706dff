"""Staged enforcement: which devices enforce a host at a given percentage.

A device computes, for each host, a bucket in [0, 10000) from its install id, the host and the
document's cohort salt, and enforces the host when the bucket is below the percentage in basis
points. So the same device stays in its cohort from one refresh to the next, raising the
percentage only adds devices (1 % is inside 10 %), each host draws its own cohort, and every
client platform computes the same answer. The function, exactly (docs/remote-policy.md has test
vectors, also checked by tests/unit/pinwatch/test_cohort.py):

    digest = SHA-256(UTF-8(salt) || 0x00 || UTF-8(host) || 0x00 || UTF-8(install_id))
    bucket = big-endian unsigned integer of digest[0:8]  mod 10000
    enforce = bucket < round(percent * 100)

`host` is the policy entry's name as the document spells it (lower case, no trailing dot), and
`install_id` the id the app sends as `device.id` in its reports. The NUL separators keep
("a", "bc") and ("ab", "c") apart.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000  # basis points: percentages with two decimals (0.01 % steps)
FUNCTION = "sha256(salt,0,host,0,install_id)[0:8]%10000"  # named in the document


def bucket(salt: str, host: str, install_id: str) -> int:
    data = b"\x00".join(part.encode("utf-8") for part in (salt, host, install_id))
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % BUCKETS


def basis_points(percent: float) -> int:
    return round(percent * 100)


def enforces(salt: str, host: str, install_id: str, percent: float) -> bool:
    """Whether this install is in the enforced cohort of `host` at `percent` (0..100)."""
    return bucket(salt, host, install_id) < basis_points(percent)
