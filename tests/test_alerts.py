"""The shipped alerting rules and Alertmanager configuration, checked by the real tools.

`promtool check rules`, `promtool test rules` (every alert has a firing case with exact labels
and annotations, and near misses that must not fire), `amtool check-config`, the routing tree
(`amtool config routes test`), and that the committed YAML is what alerts/config.py generates.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import generate
from alerts.alertmanager import alertmanager_config
from alerts.config import CONFIG
from alerts.rules import WATCHDOG, alert_names
from consumers.metrics import ConsumerMetrics
from ingest.metrics import IngestMetrics

ALERTS = Path(generate.__file__).resolve().parent
RUNBOOK = ALERTS.parent / "docs" / "runbook.md"
UNIT_TESTS = sorted((ALERTS / "tests").glob("*.test.yml"))


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)


def shipped_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(generate.RULES_FILE.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def shipped_alerts() -> list[dict[str, Any]]:
    return [rule for rule in shipped_rules() if "alert" in rule]


def test_committed_files_are_what_the_config_generates() -> None:
    for path, text in generate.files().items():
        assert path.read_text() == text, f"{path} is stale: run `python -m alerts.generate`"
    assert generate.main(["--check"]) == 0


def test_promtool_check_rules() -> None:
    result = run("promtool", "check", "rules", generate.RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(shipped_rules())} rules found" in result.stdout


@pytest.mark.parametrize("unit_test", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(unit_test: Path) -> None:
    result = run("promtool", "test", "rules", unit_test)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_case_and_a_near_miss() -> None:
    firing: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for path in UNIT_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                name = case["alertname"]
                expected = case.get("exp_alerts") or []
                for alert in expected:
                    # Firing cases assert the whole alert, not a subset.
                    assert {"severity", "component"} <= set(alert["exp_labels"]), (path, name)
                    assert set(alert["exp_annotations"]) == {
                        "summary",
                        "description",
                        "runbook_url",
                    }, (path, name)
                firing[name] = firing.get(name, 0) + len(expected)
                # A group whose only case for the alert expects it, but which also holds
                # series that must not fire (near misses on other hosts), counts as both:
                # exp_alerts lists every alert of that name, so any extra would fail it.
                series = group.get("input_series", [])
                if not expected or len(series) > _series_needed(expected, series):
                    quiet[name] = quiet.get(name, 0) + 1
    names = alert_names()
    assert sorted(firing) == sorted(names)
    assert all(firing[n] >= 1 for n in names), firing
    # The Watchdog fires always, by design: it has nothing to miss.
    assert all(quiet.get(n, 0) >= 1 for n in names if n != WATCHDOG), quiet


# Labels that tell one alert's series from a near miss's: the app and host of a pinning alert,
# the job (and instance, rule group, integration) of a pipeline or monitoring alert.
_IDENTITY = ("app", "host", "job", "instance", "rule_group", "integration")


def _series_needed(expected: list[dict[str, Any]], series: list[dict[str, Any]]) -> int:
    """Series that belong to the expected alerts (all their identifying labels equal)."""
    keys = []
    for alert in expected:
        labels = alert["exp_labels"]
        keys.append({k: str(labels[k]) for k in _IDENTITY if k in labels})
    count = 0
    for item in series:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', item["series"]))
        if any(key and all(labels.get(k) == v for k, v in key.items()) for key in keys):
            count += 1
    return count


def test_alert_conventions() -> None:
    runbook = RUNBOOK.read_text()
    headings = {
        m.group(1).lower() for m in re.finditer(r"^## (\S+)\s*$", runbook, flags=re.MULTILINE)
    }
    for alert in shipped_alerts():
        name = alert["alert"]
        assert re.fullmatch(r"Pinwatch(?:[A-Z][a-z0-9]+)+", name), name
        assert alert["labels"]["severity"] in {"page", "ticket", "info"}, name
        assert alert["labels"]["component"] in {"pinning", "pipeline", "monitoring"}, name
        notes = alert["annotations"]
        assert notes["summary"] and notes["description"], name
        base, _, anchor = notes["runbook_url"].partition("#")
        assert base == CONFIG.runbook and anchor in headings, f"{name}: no runbook section"
        if alert["labels"]["component"] == "pinning":
            # Grouped and inhibited by app and host: the description must name both.
            assert "$labels.app" in notes["description"], name
            assert "$labels.host" in notes["description"], name


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for rule in shipped_rules():
        if "record" in rule:
            level, metric, operations = rule["record"].split(":")
            assert level and metric.startswith("pinwatch_") and operations, rule["record"]


def _exposed() -> dict[str, set[str]]:
    """Sample names the consumer and ingest expose, with their label names."""
    names: dict[str, set[str]] = {"up": {"job", "instance"}}
    for registry in (ConsumerMetrics().registry, IngestMetrics().registry):
        for metric in registry._collector_to_names:  # noqa: SLF001 - label names per metric
            # prometheus_client's metrics keep `_labelnames`; ingest's own counts `labelnames`
            declared = getattr(metric, "labelnames", None) or getattr(metric, "_labelnames", ())
            labels = set(declared) | {"job", "instance"}
            for sample in registry._collector_to_names[metric]:  # noqa: SLF001
                names[sample] = labels
    return names


def test_rules_use_only_metrics_and_labels_the_services_expose() -> None:
    exposed = _exposed()
    used = set()
    for rule in shipped_rules():
        expr = rule["expr"]
        for name, selector in re.findall(r"(?<![:\w])(pinwatch_\w+|up)(?![:\w])(\{[^}]*\})?", expr):
            assert name in exposed, f"{rule.get('record') or rule.get('alert')} uses {name}"
            for label in re.findall(r"(\w+)\s*[!=]~?", selector):
                assert label in exposed[name], f"{name} has no label {label}"
            used.add(name)
    assert "pinwatch_pin_validations_total" in used and "pinwatch_failing_devices" in used


def test_amtool_check_config_committed_and_rendered(tmp_path: Path) -> None:
    result = run("amtool", "check-config", generate.ALERTMANAGER_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 inhibit rules" in result.stdout and "4 receivers" in result.stdout
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


def test_settings_choose_the_oncall_integrations() -> None:
    config = alertmanager_config(
        pagerduty_routing_key_file="/run/secrets/pd", oncall_webhook_url="http://127.0.0.1:1/p"
    )
    oncall = next(r for r in config["receivers"] if r["name"] == "oncall")
    assert oncall["pagerduty_configs"] == [
        {"routing_key_file": "/run/secrets/pd", "send_resolved": True}
    ]
    assert "opsgenie_configs" not in oncall
    assert oncall["webhook_configs"][0]["url"] == "http://127.0.0.1:1/p"
    tickets = next(r for r in config["receivers"] if r["name"] == "tickets")
    assert "webhook_configs" not in tickets  # no webhook set: tickets stay in Alertmanager
    heartbeat = next(r for r in config["receivers"] if r["name"] == "heartbeat")
    assert heartbeat == {"name": "heartbeat"}  # no heartbeat URL: a receiver with no config
