"""The shipped rules as the tests read them, and where their promtool cases live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from alerts import generate

ALERTS = Path(generate.__file__).resolve().parent
RUNBOOK = ALERTS.parent / "docs" / "runbook.md"
UNIT_TESTS = sorted((ALERTS / "tests").glob("*.test.yml"))


def shipped_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(generate.RULES_FILE.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def shipped_alerts() -> list[dict[str, Any]]:
    return [rule for rule in shipped_rules() if "alert" in rule]
