"""The shipped rules and Alertmanager configuration checked by the real tools: `promtool check
rules`, `promtool test rules` (alerts/tests/*.test.yml), `amtool check-config` and the routing tree
(`amtool config routes test`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from alerts import generate
from alerts.alertmanager import alertmanager_config
from tests.support.alerts import UNIT_TESTS, shipped_rules


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    result = run("promtool", "check", "rules", generate.RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(shipped_rules())} rules found" in result.stdout


@pytest.mark.parametrize("unit_test", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(unit_test: Path) -> None:
    result = run("promtool", "test", "rules", unit_test)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_check_config_committed_and_rendered(tmp_path: Path) -> None:
    result = run("amtool", "check-config", generate.ALERTMANAGER_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 inhibit rules" in result.stdout and "4 receivers" in result.stdout
    # The smallest rendering (no PagerDuty, Opsgenie or webhooks) is valid too.
    bare = tmp_path / "bare.yml"
    bare.write_text(generate.dump(alertmanager_config()))
    result = run("amtool", "check-config", bare)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pages_go_to_oncall_with_pagerduty_and_opsgenie() -> None:
    config = yaml.safe_load(generate.ALERTMANAGER_FILE.read_text())
    oncall = next(r for r in config["receivers"] if r["name"] == "oncall")
    assert oncall["pagerduty_configs"][0]["routing_key_file"].endswith("pagerduty-routing-key")
    assert oncall["opsgenie_configs"][0]["api_key_file"].endswith("opsgenie-api-key")
    for labels, receiver in [
        ("severity=page alertname=PinwatchRotationBreakage", "oncall"),
        ("severity=page alertname=PinwatchScrapeTargetDown", "oncall"),
        ("severity=page alertname=PinwatchProbeUnpinnedKey", "oncall"),
        ("severity=ticket alertname=PinwatchCertificateUnpinnedKey", "tickets"),
        ("severity=page alertname=PinwatchAlertmanagerNotificationsFailing", "oncall"),
        # The dead man's switch goes to the heartbeat, whatever its severity, never to on-call.
        ("severity=info component=monitoring alertname=PinwatchWatchdog", "heartbeat"),
        ("severity=page alertname=PinwatchWatchdog", "heartbeat"),
        ("severity=ticket alertname=PinwatchInterceptionSuspected", "tickets"),
        ("severity=info alertname=PinwatchBackupPinServed", "info"),
        ("alertname=SomethingWithoutSeverity", "tickets"),
    ]:
        result = run(
            "amtool",
            "config",
            "routes",
            "test",
            f"--config.file={generate.ALERTMANAGER_FILE}",
            *labels.split(),
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == receiver, (labels, result.stdout)


def test_alertmanager_rendered_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINWATCH_ALERT_OPSGENIE_API_KEY_FILE", "/run/secrets/opsgenie")
    monkeypatch.setenv("PINWATCH_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    heartbeat = "https://hb.example.test/ping/0123-secret-token"
    monkeypatch.setenv("PINWATCH_ALERT_HEARTBEAT_URL", heartbeat)
    out = tmp_path / "am.yml"
    assert generate.main(["--alertmanager-out", str(out)]) == 0
    result = run("amtool", "check-config", out)
    assert result.returncode == 0, result.stdout + result.stderr
    receivers = {r["name"]: r for r in yaml.safe_load(out.read_text())["receivers"]}
    assert receivers["oncall"]["opsgenie_configs"][0]["api_key_file"] == "/run/secrets/opsgenie"
    assert "pagerduty_configs" not in receivers["oncall"]
    assert receivers["info"]["webhook_configs"][0]["url"] == "http://127.0.0.1:9/hook"
    # Alertmanager 0.25 takes webhook URLs only inline: the file holds the heartbeat's token,
    # so only its owner may read it.
    assert receivers["heartbeat"]["webhook_configs"] == [{"url": heartbeat, "send_resolved": False}]
    assert out.stat().st_mode & 0o777 == 0o600
