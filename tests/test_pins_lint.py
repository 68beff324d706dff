"""`pinwatch pins lint`: each finding at the policy file's line, exit 1 on errors.

The offline checks run in-process on policy text (tier: unit); `--probe` runs the command as a
process against real TLS edges on loopback serving the backup key, an unpinned key and a leaf
about to expire, plus an edge nobody answers on (tier: e2e).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from conftest import TEST_HOST
from prober_support import pinwatch
from tls_servers import TlsEdge, free_port_on

from pinwatch.certs import CertificateAuthority
from prober.lint import lint_text

A = "YYQYhs8WXHNgKsgz5aX+M9zguhIAVVXPV4LCiNUzToM="
B = "6MSBF+xXP4AAQZSQB1Iih6FWPFwuIDxiuHTugot7nHQ="


def _lines(findings: list) -> list[tuple[int | None, str]]:
    return [(f.line, f.severity) for f in findings]


def test_a_sound_policy_has_no_findings() -> None:
    text = f"""\
apps:
  - id: com.acme.app
    ingest_keys: ["acme-app-demo-ingest-key-0001"]
    report_url: https://reports.acme-telemetry.test/v1/reports/trustkit
hosts:
  - host: api.acme.test
    include_subdomains: true
    pins:
      - {{sha256: "{A}", role: primary}}
      - {{sha256: "{B}", role: backup}}
"""
    policy, findings, _ = lint_text(text, "p.yaml")
    assert policy is not None and findings == []


def test_offline_findings_name_file_and_line() -> None:
    text = f"""\
apps:
  - id: com.acme.app
    ingest_keys: ["acme-app-demo-ingest-key-0001"]
    report_url: https://reports.api.acme.test/v1/reports/trustkit
hosts:
  - host: api.acme.test
    include_subdomains: true
    pins:
      - {{sha256: "{A}", role: primary}}
      - {{sha256: "{A}", role: backup}}
  - host: cdn.acme.test
    pins:
      - {{sha256: "{A}", role: primary}}
      - {{sha256: "{B}", role: backup}}
    candidate_pin_sets:
      leaf-only:
        - {{sha256: "{A}", role: primary}}
"""
    policy, findings, _ = lint_text(text, "p.yaml")
    assert policy is not None
    by_line = {f.line: f for f in findings}
    # line 4: the report URL is a subdomain of a host pinned with include_subdomains
    assert by_line[4].severity == "error" and "reports to reports.api.acme.test" in str(by_line[4])
    assert str(by_line[4]).startswith("p.yaml:4: error: com.acme.app reports to")
    # line 8: one distinct key; line 10: the backup is the primary key
    assert by_line[8].severity == "error" and "1 distinct pin(s)" in by_line[8].message
    assert by_line[10].severity == "error" and "is the primary key" in by_line[10].message
    # line 16: a candidate set with one pin is a warning, not an error
    assert by_line[16].severity == "warning" and "leaf-only" in by_line[16].message
    assert sorted(_lines(findings)) == [(4, "error"), (8, "error"), (10, "error"), (16, "warning")]


def test_a_policy_that_does_not_load_is_findings_too() -> None:
    text = f"""\
apps:
  - id: com.acme.app
    ingest_keys: ["acme-app-demo-ingest-key-0001"]
    report_url: ftp://nowhere
hosts:
  - host: api.acme.test
    pins:
      - {{sha256: "not-a-pin", role: primary}}
      - {{sha256: "{B}", role: backup}}
"""
    policy, findings, _ = lint_text(text, "p.yaml")
    assert policy is None
    assert [(f.line, f.severity) for f in findings] == [(4, "error"), (8, "error")]
    assert "base64 SHA-256" in findings[1].message and "http(s) URL" in findings[0].message
    _, findings, _ = lint_text("apps: [\n", "p.yaml")
    assert findings[0].severity == "error" and "not valid YAML" in findings[0].message


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
