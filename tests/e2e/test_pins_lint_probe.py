"""`pinwatch pins lint --probe` against real TLS edges on loopback: findings name their line."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from devstack.certs import CertificateAuthority
from tests.support.names import TEST_HOST
from tests.support.prober import pinwatch
from tests.support.tls_servers import TlsEdge, free_port_on

A = "YYQYhs8WXHNgKsgz5aX+M9zguhIAVVXPV4LCiNUzToM="
B = "6MSBF+xXP4AAQZSQB1Iih6FWPFwuIDxiuHTugot7nHQ="


def test_probe_lint_against_real_edges(
    tmp_path: Path, ca: CertificateAuthority, public_roots_file: Path
) -> None:
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    port = free_port_on(*addresses)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    names = ["backup.pinwatch.test", "rotated.pinwatch.test", "expiring.pinwatch.test"]
    hosts = "".join(
        f"""\
  - host: {name}
    phase: enforce
    port: {port}
    pins:
      - {{sha256: "{ca.pin("primary")}", role: primary, label: leaf-2026}}
      - {{sha256: "{ca.pin("backup")}", role: backup, label: offline-backup}}
"""
        for name in [*names, "gone.pinwatch.test", TEST_HOST]
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        'apps:\n  - id: com.acme.app\n    ingest_keys: ["acme-app-demo-ingest-key-0001"]\n'
        "hosts:\n" + hosts
    )
    resolve = ",".join(
        f'"{name}": ["{address}"]' for name, address in zip(names, addresses, strict=False)
    )
    env = {
        "PINWATCH_PUBLIC_ROOTS_FILE": str(public_roots_file),
        "PINWATCH_PROBE_TIMEOUT_SECONDS": "2",
        # gone.pinwatch.test: an address where nothing listens
        "PINWATCH_PROBE_RESOLVE": "{" + resolve + ', "gone.pinwatch.test": ["127.0.0.5"]}',
    }
    with (
        TlsEdge("127.0.0.2", port, ca, tmp_path / "a") as backup,
        TlsEdge("127.0.0.3", port, ca, tmp_path / "b") as rotated,
        TlsEdge("127.0.0.4", port, ca, tmp_path / "c") as expiring,
        TlsEdge("127.0.0.6", port, ca, tmp_path / "d") as healthy,
    ):
        backup.serve("backup")
        rotated.serve("rotated")
        expiring.serve("primary", ca.chain("primary", not_after=soon))
        healthy.serve("primary")
        # Offline, the policy is sound.
        assert pinwatch("pins", "lint", "--policy", policy, env=env).code == 0
        result = pinwatch(
            "pins",
            "lint",
            "--probe",
            "--expiry-days",
            "30",
            "--policy",
            policy,
            "--resolve",
            f"{TEST_HOST}=127.0.0.6",
            env=env,
        )
    assert result.code == 1 and "Traceback" not in result.stderr
    found = [line for line in result.stdout.splitlines() if ": error: " in line]
    # Each host takes 6 lines, from line 5: host at 5 + 6k, its pins at 8 + 6k, backup 10 + 6k.
    assert any(
        line.startswith(
            f"{policy}:10: error: backup.pinwatch.test at 127.0.0.2 serves the "
            "backup key offline-backup"
        )
        for line in found
    ), found
    assert any(
        line.startswith(
            f"{policy}:14: error: rotated.pinwatch.test at 127.0.0.3 serves a chain "
            "with no pinned key"
        )
        for line in found
    ), found
    assert any(
        line.startswith(
            f"{policy}:17: error: expiring.pinwatch.test at 127.0.0.4: the leaf "
            f"certificate expires {soon:%Y-%m-%d}"
        )
        for line in found
    ), found
    assert any(
        line.startswith(f"{policy}:23: error: cannot probe gone.pinwatch.test: 127.0.0.5:")
        and "connection refused" in line
        for line in found
    ), found
    assert len(found) == 4, found  # the healthy host (line 29) has nothing to say
    assert "4 error(s)" in result.stderr
