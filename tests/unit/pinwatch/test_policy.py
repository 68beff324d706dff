"""The pin policy: loaded whole, errors name the line, lookups follow subdomain rules."""

from __future__ import annotations

import pytest

from pinwatch.policy import PolicyError, load_policy, parse_policy
from pinwatch.resources import EXAMPLE_POLICY
from pinwatch.vocabulary import PinMatch

PRIMARY = "YYQYhs8WXHNgKsgz5aX+M9zguhIAVVXPV4LCiNUzToM="
BACKUP = "6MSBF+xXP4AAQZSQB1Iih6FWPFwuIDxiuHTugot7nHQ="
GOOD = f"""
apps:
  - id: com.acme.app
    ingest_keys: ["a-long-random-ingest-key"]
hosts:
  - host: API.Acme.com.
    include_subdomains: true
    phase: enforce
    pins:
      - {{sha256: "{PRIMARY}", role: primary, label: leaf}}
      - {{sha256: "{BACKUP}", role: backup}}
  - host: exact.acme.net
    pins:
      - {{sha256: "{PRIMARY}", role: primary}}
      - {{sha256: "{BACKUP}", role: backup}}
"""


def test_example_policy_shipped_in_deploy_is_valid() -> None:
    policy = load_policy(EXAMPLE_POLICY)
    assert policy.app_for_key("acme-app-demo-ingest-key-0001") == "com.acme.app"


def test_lookup_by_key_host_and_pin() -> None:
    policy = parse_policy(GOOD)
    assert policy.app_for_key("a-long-random-ingest-key") == "com.acme.app"
    assert policy.app_for_key("unknown-key-1234567") is None
    assert policy.app_for_key(None) is None
    host = policy.host("api.acme.com")
    assert host is not None and host.phase == "enforce"
    assert policy.host("eu.api.acme.com") is host  # include_subdomains
    assert policy.host("sub.exact.acme.net") is None  # not included
    assert policy.host("acme.com") is None
    assert host.match(["x", BACKUP]) == PinMatch.BACKUP
    assert host.match([BACKUP, PRIMARY]) == PinMatch.PRIMARY
    assert host.match(["AAAA"]) == PinMatch.NONE


@pytest.mark.parametrize(
    ("broken", "line", "words"),
    [
        (GOOD.replace(f'"{BACKUP}"', '"not-a-pin"'), 11, "hosts.0.pins.1.sha256"),
        (GOOD.replace("phase: enforce", "phase: sometimes"), 8, "hosts.0.phase"),
        (GOOD.replace('["a-long-random-ingest-key"]', '["short"]'), 4, "at least 16 characters"),
        (GOOD.replace("role: backup}", "role: primary}"), 6, "one primary and one backup"),
    ],
)
def test_errors_name_the_line(broken: str, line: int, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(broken, source="policy.yaml")
    assert f"policy.yaml:{line}:" in str(info.value)
    assert words in str(info.value)


def test_not_yaml_and_missing_file_are_clear() -> None:
    with pytest.raises(PolicyError, match="not valid YAML"):
        parse_policy("apps: [", source="p.yaml")
    with pytest.raises(PolicyError, match="cannot read pin policy"):
        load_policy("/nonexistent/policy.yaml")
