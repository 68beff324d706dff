"""The committed dashboards: generated from dashboards/*.py without drift, and built the way a
reviewer of a Grafana dashboard checks by hand (unique panel ids, every query bound to a
datasource variable, a unit and a description on every panel, $__rate_interval on rates,
alert annotations, runbook links), plus the provisioning files that load them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from dashboards import generate
from dashboards.common import ALERT_NAME_REGEX, CLICKHOUSE_UID, PROMETHEUS_UID
from dashboards.interpolate import (
    Selection,
    apply_conditional_all,
    clickhouse_sql,
    prometheus_expr,
    rate_interval,
)
from tests.support.paths import REPO

ROOT = REPO
JSON_DIR = ROOT / "dashboards" / "json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
DASHBOARD_FILES = sorted(JSON_DIR.glob("*.json"))
DATASOURCE_TYPES = {"prometheus": "prometheus", "clickhouse": "grafana-clickhouse-datasource"}
# grafana-clickhouse-datasource's macros: backend (pkg/macros/macros.go) and frontend.
CLICKHOUSE_MACROS = {
    "timeFilter", "timeFilter_ms", "dateFilter", "dateTimeFilter", "dt", "fromTime", "toTime",
    "fromTime_ms", "toTime_ms", "timeInterval", "timeInterval_ms", "interval_s", "conditionalAll",
}  # fmt: skip


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(model: dict) -> list[dict]:
    out = []
    for panel in model["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows carry their panels inside
    return out


def data_panels(model: dict) -> list[dict]:
    return [p for p in panels(model) if p["type"] != "row"]


def variables(model: dict) -> dict[str, dict]:
    return {v["name"]: v for v in model["templating"]["list"]}


def targets(model: dict) -> list[tuple[dict, dict]]:
    return [(panel, target) for panel in data_panels(model) for target in panel["targets"]]


def test_three_dashboards_are_committed():
    assert {p.stem for p in DASHBOARD_FILES} == {
        "pinwatch-overview",
        "pinwatch-rollout",
        "pinwatch-pipeline",
    }


def test_committed_json_matches_the_generator():
    stale = generate.drift()
    assert stale == [], f"regenerate with `python -m dashboards.generate`: {stale}"


def test_check_flag_reports_drift(tmp_path: Path):
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0
    edited = tmp_path / "pinwatch-overview.json"
    model = json.loads(edited.read_text())
    model["title"] = "edited by hand"
    edited.write_text(json.dumps(model))
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
    (tmp_path / "leftover.json").write_text("{}")
    assert "leftover.json" in generate.drift(tmp_path)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
class TestStructure:
    def test_uid_title_and_tags(self, path: Path):
        model = load(path)
        assert model["uid"] == path.stem
        assert model["title"].startswith("pinwatch / ")
        assert "pinwatch" in model["tags"]

    def test_panel_ids_are_unique_and_set(self, path: Path):
        ids = [p.get("id") for p in panels(load(path))]
        assert all(isinstance(i, int) and i > 0 for i in ids), ids
        assert len(ids) == len(set(ids)), ids

    def test_every_panel_has_a_unit_and_a_description(self, path: Path):
        for panel in data_panels(load(path)):
            assert panel.get("description", "").strip(), panel["title"]
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]

    def test_every_panel_has_targets(self, path: Path):
        for panel in data_panels(load(path)):
            assert panel["targets"], panel["title"]
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]

    def test_every_target_is_bound_to_a_datasource_variable(self, path: Path):
        model = load(path)
        declared = {
            name: v["query"] for name, v in variables(model).items() if v["type"] == "datasource"
        }
        for panel, target in targets(model):
            for ref in (panel["datasource"], target["datasource"]):
                match = re.fullmatch(r"\$\{(\w+)\}", ref["uid"])
                assert match, f"{panel['title']}: fixed datasource uid {ref['uid']}"
                name = match.group(1)
                assert name in declared, f"{panel['title']}: no datasource variable ${name}"
                assert ref["type"] == declared[name] == DATASOURCE_TYPES[name]
            assert panel["datasource"] == target["datasource"], panel["title"]

    def test_one_datasource_variable_per_datasource_used(self, path: Path):
        model = load(path)
        used = {t["datasource"]["uid"] for _, t in targets(model)}
        used |= {a["datasource"]["uid"] for a in model["annotations"]["list"]}
        ds_vars = [v for v in variables(model).values() if v["type"] == "datasource"]
        assert {f"${{{v['name']}}}" for v in ds_vars} == used
        assert len({v["query"] for v in ds_vars}) == len(ds_vars)
        defaults = {v["current"]["value"] for v in ds_vars}
        assert defaults <= {PROMETHEUS_UID, CLICKHOUSE_UID}

    def test_app_and_host_variables(self, path: Path):
        model = load(path)
        found = variables(model)
        for name in ("app", "host"):
            variable = found[name]
            assert variable["type"] == "query"
            assert variable["includeAll"] and variable["multi"]
            assert variable["datasource"]["uid"] in ("${prometheus}", "${clickhouse}")
        # the host list follows the app selection
        assert "$app" in json.dumps(found["host"]["query"])
        # and every data query honours both (pipeline health is mostly app-independent)
        filtered = [t for _, t in targets(model) if "$app" in json.dumps(t)]
        assert filtered and all("$host" in json.dumps(t) for t in filtered)

    def test_rates_use_rate_interval(self, path: Path):
        for panel, target in targets(load(path)):
            expr = target.get("expr", "")
            windows = re.findall(r"\b(?:rate|irate|increase)\s*\([^\[]*\[([^\]]+)\]", expr)
            assert all(w == "$__rate_interval" for w in windows), (panel["title"], windows)
            assert expr.count("rate(") + expr.count("increase(") == len(windows), expr

    def test_alert_annotation_from_prometheus(self, path: Path):
        (annotation,) = load(path)["annotations"]["list"]
        assert annotation["datasource"] == {"type": "prometheus", "uid": "${prometheus}"}
        assert annotation["enable"] is True
        assert annotation["expr"].startswith("ALERTS{")
        assert ALERT_NAME_REGEX in annotation["expr"]

    def test_runbook_link(self, path: Path):
        links = load(path)["links"]
        assert any(link["url"].endswith("docs/runbook.md") for link in links)

    def test_variables_used_in_queries_exist(self, path: Path):
        model = load(path)
        names = set(variables(model))
        text = json.dumps([t for _, t in targets(model)] + list(variables(model).values()))
        used = set(re.findall(r"\$\{?(?!__)(\w+)", text))
        assert used <= names, used - names


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_clickhouse_targets_use_the_plugins_query_model(path: Path):
    for panel, target in targets(load(path)):
        if target["datasource"]["uid"] != "${clickhouse}":
            continue
        assert target["editorType"] == "sql"
        assert target["queryType"] in ("table", "timeseries")
        assert target["format"] == (0 if target["queryType"] == "timeseries" else 1)
        major = int(target["pluginVersion"].split(".")[0])
        assert major >= 4, "queries without a v4 pluginVersion are migrated as v3 queries"
        macros = set(re.findall(r"\$__(\w+)", target["rawSql"]))
        assert macros <= CLICKHOUSE_MACROS, (panel["title"], macros - CLICKHOUSE_MACROS)
        if target["queryType"] == "timeseries":
            assert "$__timeInterval(" in target["rawSql"], panel["title"]
        # every query is bounded by the dashboard's time range
        assert re.search(r"\$__timeFilter\(|\$__fromTime\b", target["rawSql"]), panel["title"]


def test_rollout_reads_clickhouse_and_the_others_prometheus():
    kinds = {
        path.stem: {t["datasource"]["type"] for _, t in targets(load(path))}
        for path in DASHBOARD_FILES
    }
    assert kinds["pinwatch-rollout"] == {"grafana-clickhouse-datasource"}
    assert kinds["pinwatch-overview"] == {"prometheus"}
    assert kinds["pinwatch-pipeline"] == {"prometheus"}


def test_every_shipped_alert_is_explained_by_a_panel():
    """Each alert in alerts/rules.yml has a panel linking to its runbook section, and every
    panel's runbook anchor names an alert that exists."""
    rules = yaml.safe_load((ROOT / "alerts" / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    linked: set[str] = set()
    for path in DASHBOARD_FILES:
        for panel in data_panels(load(path)):
            for link in panel.get("links", []):
                _, _, anchor = link["url"].partition("#")
                if anchor:
                    linked.add(anchor)
    assert linked <= {a.lower() for a in alerts}, linked - {a.lower() for a in alerts}
    assert {a.lower() for a in alerts} <= linked, {a for a in alerts if a.lower() not in linked}
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for alert in alerts:
        assert f"## {alert}" in runbook, f"runbook has no section for {alert}"


def test_pin_failures_and_network_errors_never_share_a_panel():
    model = load(JSON_DIR / "pinwatch-overview.json")
    for panel in data_panels(model):
        exprs = " ".join(t["expr"] for t in panel["targets"])
        assert not (
            "pinwatch_pin_validations_total" in exprs and "pinwatch_network_errors_total" in exprs
        ), panel["title"]
    titles = {p["title"] for p in data_panels(model)}
    assert {"Pin failures by result and cause", "Network errors by category"} <= titles


# --- the emulation of Grafana and the ClickHouse plugin the query tests rely on ---------------


def test_prometheus_variables_render_like_grafana():
    selection = Selection(
        values={"app": "$__all", "host": ["api.x.test"]}, all_values={"app": ".*"}
    )
    expr = prometheus_expr(
        'rate(m{app=~"$app", host=~"$host"}[$__rate_interval])', selection, 3600, 15
    )
    assert expr == r'rate(m{app=~".*", host=~"api\\.x\\.test"}[60s])'
    selection.values["host"] = ["a.test", "b.test"]
    assert (
        prometheus_expr('{host=~"${host}"}', selection, 60, 1) == r'{host=~"(a\\.test|b\\.test)"}'
    )


def test_rate_interval_is_four_scrapes_or_interval_plus_scrape():
    assert rate_interval(3600, 15) == 60
    assert rate_interval(7 * 86400, 15) == 605 + 15


def test_clickhouse_conditional_all_and_macros_render_like_the_plugin():
    from datetime import UTC, datetime

    start = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    end = datetime(2026, 11, 28, 11, 0, tzinfo=UTC)
    sql = (
        "SELECT $__timeInterval(t) AS time FROM ${database}.r WHERE $__timeFilter(t) "
        "AND $__conditionalAll(app IN (${app:singlequote}), $app)"
    )
    everything = Selection(values={"app": "$__all"}, constants={"database": "db"})
    assert clickhouse_sql(sql, everything, start, end) == (
        "SELECT toStartOfInterval(toDateTime(t), INTERVAL 3 second) AS time FROM db.r "
        f"WHERE t >= toDateTime({int(start.timestamp())}) "
        f"AND t <= toDateTime({int(end.timestamp())}) AND 1=1"
    )
    two = Selection(values={"app": ["a", "b"]}, constants={"database": "db"})
    assert clickhouse_sql(sql, two, start, end).endswith("AND app IN ('a','b')")
    # the plugin's own format: a multi-value selection is quoted even when one value is picked
    one = Selection(values={"app": ["a"]})
    assert clickhouse_sql("x IN ($app)", one, start, end) == "x IN ('a')"
    with pytest.raises(ValueError, match="2 arguments"):
        apply_conditional_all("$__conditionalAll(x)", two)


# --- provisioning --------------------------------------------------------------------------------


def test_datasource_provisioning_matches_the_dashboard_defaults():
    config = yaml.safe_load((PROVISIONING / "datasources" / "pinwatch.yaml").read_text())
    assert config["apiVersion"] == 1
    by_uid = {ds["uid"]: ds for ds in config["datasources"]}
    assert by_uid[PROMETHEUS_UID]["type"] == "prometheus"
    clickhouse = by_uid[CLICKHOUSE_UID]
    assert clickhouse["type"] == "grafana-clickhouse-datasource"
    assert {"host", "port", "protocol", "username"} <= set(clickhouse["jsonData"])
    assert "password" in clickhouse["secureJsonData"]


def test_dashboard_provider_points_at_the_generated_json():
    config = yaml.safe_load((PROVISIONING / "dashboards" / "pinwatch.yaml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    source = (ROOT / "deploy" / mounts[provider["options"]["path"]]).resolve()
    assert source == JSON_DIR
    provisioning = (ROOT / "deploy" / mounts["/etc/grafana/provisioning"]).resolve()
    assert provisioning == PROVISIONING
    plugins = grafana["environment"]["GF_INSTALL_PLUGINS"]
    assert "grafana-clickhouse-datasource" in plugins
