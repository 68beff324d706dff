"""`pinwatch policy` as a command line: both places --policy may go, and what the levers print
(the levers themselves run against a real stack in tests/e2e/test_remote_policy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinwatch.cli import build_parser
from pinwatch.cmd_policy import describe_change, render_history, render_status


@pytest.mark.parametrize(
    "argv",
    [
        ["policy", "check", "--policy", "mine.yaml"],
        ["policy", "--policy", "mine.yaml", "check"],
    ],
)
def test_check_takes_the_policy_before_or_after_the_action(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.action, args.policy) == ("check", Path("mine.yaml"))


def test_levers_parse_as_documented() -> None:
    parser = build_parser()
    phase = parser.parse_args(
        ["policy", "set-phase", "cdn.acme.test", "enforce", "--percent", "10"]
    )
    assert (phase.host, phase.phase, phase.percent) == ("cdn.acme.test", "enforce", 10.0)
    kill = parser.parse_args(["policy", "kill", "com.acme.app", "--host", "api.acme.test",
                              "--reason", "why"])  # fmt: skip
    assert (kill.app, kill.host, kill.reason, kill.actor) == (
        "com.acme.app", "api.acme.test", "why", None,
    )  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args(["policy", "kill", "com.acme.app"])  # a kill needs --reason
    with pytest.raises(SystemExit):
        parser.parse_args(["policy", "set-phase", "cdn.acme.test", "on"])


def test_what_the_levers_print() -> None:
    record = {
        "version": 7, "actor": "alice@laptop", "action": "set_phase", "app": "",
        "host": "cdn.acme.test", "reason": "staged", "changed_at": "2026-12-01T10:00:00.000Z",
        "what": {"phase": ["report_only", "enforce"], "percent": [0.0, 10.0]},
    }  # fmt: skip
    assert describe_change(record) == (
        "version 7: cdn.acme.test: enforce at 10 % (was report_only at 0 %) (reason: staged); "
        "by alice@laptop"
    )
    kill = {**record, "action": "kill", "app": "com.acme.app", "host": "", "reason": "",
            "what": {"kill_switch": [False, True]}}  # fmt: skip
    assert describe_change(kill) == (
        "version 7: kill switch ON for com.acme.app on every host; by alice@laptop"
    )
    assert render_history([kill]).startswith("2026-12-01T10:00:00.000Z  version 7:")
    adopted = {**record, "action": "policy_file", "actor": "pinwatch consume on host-1",
               "reason": "first start", "what": {"policy_sha256": ["", "ab" * 32]}}  # fmt: skip
    assert describe_change(adopted) == (
        "version 7: policy file - -> abababababab (reason: first start); "
        "by pinwatch consume on host-1"
    )
    assert render_history([]) == "no changes recorded"
    status = {
        "version": 7, "changed_at": "2026-12-01T10:00:00.000Z", "apps": ["com.acme.app"],
        "hosts": [
            {"host": "api.acme.test", "phase": "enforce", "enforce_percent": 100.0,
             "set_by_lever": False, "killed_for": ["com.acme.app"]},
            {"host": "cdn.acme.test", "phase": "enforce", "enforce_percent": 10.0,
             "set_by_lever": True, "killed_for": []},
        ],
        "kills": [{"app": "com.acme.app", "host": "api.acme.test", "reason": "rotation",
                   "actor": "bob", "at": "2026-12-01T09:00:00.000Z"}],
    }  # fmt: skip
    text = render_status(status)
    assert text.splitlines()[0] == "live policy version 7 (changed 2026-12-01T10:00:00.000Z)"
    assert "api.acme.test  enforce        100 %  KILLED for com.acme.app" in text
    assert "(from the policy file)" in text.splitlines()[1]
    assert "cdn.acme.test  enforce         10 %" in text
    assert (
        "kill switch: com.acme.app on api.acme.test since 2026-12-01T09:00:00.000Z by bob" in text
    )
