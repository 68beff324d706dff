"""Staged enforcement cohorts: the documented function and its test vectors (the same vectors
are in docs/remote-policy.md for the Swift and Kotlin implementations)."""

from __future__ import annotations

import hashlib

import pytest

from pinwatch.cohort import bucket, enforces

# (salt, host, install id) -> bucket, also listed in docs/remote-policy.md.
VECTORS = [
    ("com.acme.app", "api.acme.test", "install-0001", 6133),
    ("com.acme.app", "api.acme.test", "install-0002", 3198),
    ("com.acme.app", "cdn.acme.test", "install-0001", 2705),
    ("salt-2027", "api.acme.test", "install-0001", 4338),
    ("com.acme.app", "api.acme.test", "E621E1F8-C36C-495A-93FC-0C247A3E6E5F", 4609),
    ("com.acme.app", "api.acme.test", "ünïcødé-install", 5670),
]


@pytest.mark.parametrize(("salt", "host", "install_id", "expected"), VECTORS)
def test_vectors(salt: str, host: str, install_id: str, expected: int) -> None:
    assert bucket(salt, host, install_id) == expected
    # The documented formula, spelled out independently of the module.
    digest = hashlib.sha256(f"{salt}\0{host}\0{install_id}".encode()).hexdigest()
    assert int(digest[:16], 16) % 10_000 == expected


def test_a_device_enforces_below_the_percentage_and_stays_in_as_it_grows() -> None:
    salt, host, device = "com.acme.app", "api.acme.test", "install-0002"  # bucket 3198
    assert not enforces(salt, host, device, 31.98)
    assert enforces(salt, host, device, 31.99)
    assert [enforces(salt, host, device, p) for p in (0, 1, 10, 50, 100)] == [
        False,
        False,
        False,
        True,
        True,
    ]


def test_shares_follow_the_percentage_and_hosts_draw_their_own_cohorts() -> None:
    devices = [f"device-{n}" for n in range(20_000)]
    for percent in (1, 10, 50):
        share = sum(enforces("s", "a.test", d, percent) for d in devices) / len(devices)
        assert abs(share - percent / 100) < 0.01, (percent, share)
    one = {d for d in devices if enforces("s", "a.test", d, 10)}
    ten = {d for d in devices if enforces("s", "a.test", d, 50)}
    assert one <= ten  # raising the percentage only adds devices
    other_host = {d for d in devices if enforces("s", "b.test", d, 10)}
    assert 0.05 < len(one & other_host) / len(one) < 0.15  # independent: about 10 % overlap
    assert enforces("s", "a.test", "x", 100) and not enforces("s", "a.test", "x", 0)
