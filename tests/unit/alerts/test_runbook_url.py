"""Runbook links are absolute and set in one place: PINWATCH_RUNBOOK_URL (default: the
project's published runbook). alerts/rules.yml, the PrometheusRule and the dashboards all
follow it when regenerated; a relative path (which opens nowhere from Grafana or a page) is
refused."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import yaml

from alerts import generate
from dashboards import generate as dashboards_generate
from pinwatch.settings import Settings

DEFAULT = Settings.model_fields["runbook_url"].default
PUBLISHED = "https://docs.acme.test/pinwatch/runbook.html"


def runbook_urls_in_rules(text: str) -> list[str]:
    data = yaml.safe_load(text)
    groups = data["spec"]["groups"] if "spec" in data else data["groups"]
    return [r["annotations"]["runbook_url"] for g in groups for r in g["rules"] if "alert" in r]


def test_relative_or_fragment_urls_are_refused() -> None:
    for bad in ("docs/runbook.md", "/runbook", f"{PUBLISHED}#top"):
        with pytest.raises(pydantic.ValidationError, match="absolute http"):
            Settings(runbook_url=bad)


def test_committed_links_are_the_absolute_default() -> None:
    assert DEFAULT.startswith("https://") and DEFAULT.endswith("docs/runbook.md")
    committed = generate.RULES_FILE.read_text()
    rule = (generate.K8S_MONITORING_DIR / "prometheusrule.yaml").read_text()
    for text in (committed, rule):
        urls = runbook_urls_in_rules(text.split("\n", 1)[1])
        assert urls and all(u.startswith(f"{DEFAULT}#") for u in urls)


def test_one_setting_moves_every_link(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PINWATCH_RUNBOOK_URL", PUBLISHED)
    files = generate.files(generate.configured())
    for path in (generate.RULES_FILE, generate.K8S_MONITORING_DIR / "prometheusrule.yaml"):
        urls = runbook_urls_in_rules(files[path].split("\n", 1)[1])
        assert urls and all(u.startswith(f"{PUBLISHED}#pinwatch") for u in urls), path
    assert dashboards_generate.main(["--out", str(tmp_path)]) == 0
    links = [
        link["url"]
        for path in tmp_path.glob("*.json")
        for link in json.loads(path.read_text())["links"]
        if "runbook" in link.get("title", "").lower() or link.get("url", "").startswith("http")
    ]
    assert links and all(u.startswith(PUBLISHED) for u in links), links
    assert DEFAULT not in "".join(p.read_text() for p in tmp_path.glob("*.json"))
