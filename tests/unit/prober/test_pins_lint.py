"""`pinwatch pins lint`: each finding at the policy file's line, exit 1 on errors.

The offline checks run in-process on policy text (tier: unit); `--probe` runs the command as a
process against real TLS edges on loopback serving the backup key, an unpinned key and a leaf
about to expire, plus an edge nobody answers on (tier: e2e).
"""

from __future__ import annotations

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
