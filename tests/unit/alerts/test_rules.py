"""The shipped alerting rules and Alertmanager configuration as data: the committed YAML is what
alerts/config.py generates, every alert has a firing case and a near miss in alerts/tests/, the
mixin's conventions hold, and rules use only what the services expose. The real tools (promtool,
amtool) check the same files in tests/integration/alerts/test_tools.py."""

from __future__ import annotations

import re
from typing import Any

import yaml

from alerts import generate
from alerts.alertmanager import alertmanager_config
from alerts.config import CONFIG
from alerts.rules import WATCHDOG, alert_names
from consumers.metrics import ConsumerMetrics
from ingest.metrics import IngestMetrics
from pinwatch.policy import parse_policy
from prober.metrics import CtMetrics, ProbeMetrics
from tests.support.alerts import RUNBOOK, UNIT_TESTS, shipped_alerts, shipped_rules

# For the prober's and CT watcher's metric registries (their info metric lists policy hosts).
POLICY = """\
apps: [{id: com.a, ingest_keys: [a-long-ingest-key-0001]}]
hosts:
  - host: api.a.test
    pins:
      - {sha256: "YYQYhs8WXHNgKsgz5aX+M9zguhIAVVXPV4LCiNUzToM=", role: primary}
      - {sha256: "6MSBF+xXP4AAQZSQB1Iih6FWPFwuIDxiuHTugot7nHQ=", role: backup}
"""


def test_committed_files_are_what_the_config_generates() -> None:
    for path, text in generate.files().items():
        assert path.read_text() == text, f"{path} is stale: run `python -m alerts.generate`"
    assert generate.main(["--check"]) == 0


def test_every_alert_has_a_firing_case_and_a_near_miss() -> None:
    annotations = {a["alert"]: set(a["annotations"]) for a in shipped_alerts()}
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
                    assert set(alert["exp_annotations"]) == annotations[name], (path, name)
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
        assert alert["labels"]["component"] in {
            "pinning",
            "pipeline",
            "prober",
            "ct",
            "monitoring",
        }, name
        notes = alert["annotations"]
        assert notes["summary"] and notes["description"], name
        base, _, anchor = notes["runbook_url"].partition("#")
        assert base == CONFIG.runbook and anchor in headings, f"{name}: no runbook section"
        if alert["labels"]["component"] in {"pinning", "prober"}:
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
    policy = parse_policy(POLICY)
    registries = (
        ConsumerMetrics().registry,
        IngestMetrics().registry,
        ProbeMetrics(policy).registry,
        CtMetrics(policy).registry,
    )
    for registry in registries:
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
        for name, selector in re.findall(
            r"(?<![:\w])(pinwatch_\w+|process_\w+|up)(?![:\w])(\{[^}]*\})?", expr
        ):
            assert name in exposed, f"{rule.get('record') or rule.get('alert')} uses {name}"
            for label in re.findall(r"(\w+)\s*[!=]~?", selector):
                assert label in exposed[name], f"{name} has no label {label}"
            used.add(name)
    assert "pinwatch_pin_validations_total" in used and "pinwatch_failing_devices" in used


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


def test_the_rotation_page_names_the_kill_switch_for_its_app_and_host() -> None:
    """The command in a page is one the on-call can paste: `pinwatch policy kill` for the
    alert's own app and host, which the real command line parses."""
    import shlex

    from pinwatch.cli import build_parser

    levers = {
        a["alert"]: {k: v for k, v in a["annotations"].items() if k in ("kill_switch", "rollback")}
        for a in shipped_alerts()
    }
    assert set(levers["PinwatchRotationBreakage"]) == {"kill_switch"}
    assert set(levers["PinwatchEnforcedCohortFailing"]) == {"kill_switch", "rollback"}
    parser = build_parser()
    for name, commands in levers.items():
        for command in commands.values():
            rendered = command.replace("{{ $labels.app }}", "com.a").replace(
                "{{ $labels.host }}", "api.a.test"
            )
            argv = shlex.split(rendered)
            assert argv[:2] == ["pinwatch", "policy"], (name, command)
            args = parser.parse_args(argv[1:])
            if args.action == "kill":
                assert (args.app, args.host) == ("com.a", "api.a.test"), name
                assert args.reason.startswith(f"{name}: "), name
            else:
                assert (args.host, args.phase) == ("api.a.test", "report_only"), name
