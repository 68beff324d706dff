"""Pieces every pinwatch dashboard shares: datasource variables, app/host variables, the alert
annotation, runbook links, and panel constructors that refuse to build a panel without a unit
and a description.

Every target names its datasource through a dashboard variable (`${prometheus}`,
`${clickhouse}`), never a fixed uid, so the same JSON works in any Grafana whatever its
datasources are called.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
    TableCellHeight,
)

from alerts.config import CONFIG as ALERT_CONFIG
from alerts.rules import WATCHDOG

# Provisioned datasource uids (deploy/grafana); the variables default to them.
PROMETHEUS_UID = "pinwatch-prometheus"
CLICKHOUSE_UID = "pinwatch-clickhouse"
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"
# Queries carry the plugin version they were written for; without one (or below 4.0.0) the
# plugin's frontend treats them as v3 queries and migrates them.
CLICKHOUSE_PLUGIN_VERSION = "4.3.2"

PROMETHEUS = dm.DataSourceRef(type_val="prometheus", uid="${prometheus}")
CLICKHOUSE = dm.DataSourceRef(type_val=CLICKHOUSE_PLUGIN, uid="${clickhouse}")

# One home for where the runbook lives: the alerts' runbook_url uses the same value, the
# PINWATCH_RUNBOOK_URL setting (`python -m dashboards.generate` reads it; --runbook-url wins).
DEFAULT_RUNBOOK_URL = ALERT_CONFIG.runbook

# Alerts pinwatch ships (alerts/) are CamelCase with this prefix; the annotation and the
# active-alerts panel show only them, not every alert the user's Prometheus evaluates, and not
# the Watchdog, which fires always (it is the heartbeat, not news).
ALERT_NAME_REGEX = "Pinwatch.*"
ALERTS_SELECTOR = f'alertname=~"{ALERT_NAME_REGEX}", alertname!="{WATCHDOG}"'

# Label matchers shared by every query over the per-app, per-host metrics.
APP_HOST = 'app=~"$app", host=~"$host"'

TAGS = ["pinwatch"]


_Model = TypeVar("_Model")


class _Built(cogbuilder.Builder[_Model]):
    """A builder for a model built here (one the SDK cannot express), where the SDK's builder
    methods take a builder."""

    def __init__(self, model: _Model) -> None:
        self._model = model

    def build(self) -> _Model:
        return self._model


# --- variables ---------------------------------------------------------------------------------


def _datasource_variable(
    name: str, label: str, plugin: str, uid: str, help_text: str
) -> dashboard.DatasourceVariable:
    return (
        dashboard.DatasourceVariable(name)
        .label(label)
        .type(plugin)
        .description(help_text)
        .current(dm.VariableOption(text=f"pinwatch {label}", value=uid))
    )


def prometheus_datasource_variable() -> dashboard.DatasourceVariable:
    return _datasource_variable(
        "prometheus",
        "Prometheus",
        "prometheus",
        PROMETHEUS_UID,
        "Prometheus that scrapes the pinwatch ingest and consumer /metrics.",
    )


def clickhouse_datasource_variable() -> dashboard.DatasourceVariable:
    return _datasource_variable(
        "clickhouse",
        "ClickHouse",
        CLICKHOUSE_PLUGIN,
        CLICKHOUSE_UID,
        "ClickHouse holding the pinwatch tables (grafana-clickhouse-datasource).",
    )


def database_variable() -> dashboard.TextBoxVariable:
    return (
        dashboard.TextBoxVariable("database")
        .label("Database")
        .description("ClickHouse database pinwatch writes to (PINWATCH_CLICKHOUSE_DATABASE).")
        .default_value("pinwatch")
        .current(dm.VariableOption(text="pinwatch", value="pinwatch"))
    )


def _all_option() -> dm.VariableOption:
    return dm.VariableOption(text=["All"], value=["$__all"], selected=True)


def _multi_value_variable(
    name: str, label: str, help_text: str, datasource: dm.DataSourceRef, query: str
) -> dashboard.QueryVariable:
    """A variable listing what `query` returns (sorted, refreshed with the time range), several
    values selectable, "All" selected at first."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .description(help_text)
        .datasource(datasource)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(_all_option())
    )


def prometheus_label_variable(
    name: str, label: str, query: str, help_text: str
) -> dashboard.QueryVariable:
    # allValue `.*`: "All" then also matches series whose label is empty, and the query stays
    # short however many apps exist.
    return _multi_value_variable(name, label, help_text, PROMETHEUS, query).all_value(".*")


def prometheus_app_host_variables() -> list[cogbuilder.Builder[dm.VariableModel]]:
    return [
        prometheus_label_variable(
            "app",
            "App",
            "label_values(pinwatch_pin_validations_total, app)",
            "App id as in the pin policy.",
        ),
        prometheus_label_variable(
            "host",
            "Host",
            'label_values(pinwatch_pin_validations_total{app=~"$app"}, host)',
            "Pinned host (hosts outside the policy fold into `other`).",
        ),
    ]


def clickhouse_label_variable(
    name: str, label: str, sql: str, help_text: str
) -> dashboard.QueryVariable:
    # No allValue: the rollout SQL wraps every filter in $__conditionalAll, which the plugin
    # replaces by 1=1 when "All" is selected, so "All" never lists every value in SQL.
    return _multi_value_variable(name, label, help_text, CLICKHOUSE, _dedent(sql))


# --- annotations and links ---------------------------------------------------------------------


class _PrometheusAnnotation(dm.AnnotationQuery):
    """The SDK's AnnotationQuery knows `expr` but not the Prometheus annotation's title, text
    and tag fields; this adds them to the JSON."""

    extra: dict[str, Any]

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(self.extra)
        return payload


def alert_annotation() -> cogbuilder.Builder[dm.AnnotationQuery]:
    """Firing pinwatch alerts from Prometheus' ALERTS series, drawn on every time panel."""
    model = _PrometheusAnnotation(
        name="pinwatch alerts",
        datasource=PROMETHEUS,
        enable=True,
        hide=False,
        icon_color="red",
        expr=f'ALERTS{{alertstate="firing", {ALERTS_SELECTOR}}}',
    )
    model.extra = {
        "expr": model.expr,
        "step": "60s",
        "titleFormat": "{{alertname}} ({{severity}})",
        "textFormat": "{{host}} {{app}}",
        "tagKeys": "severity,alertname",
        "useValueForTime": False,
    }
    return _Built[dm.AnnotationQuery](model)


def runbook_link(
    runbook_url: str, title: str = "Runbook", anchor: str = ""
) -> dashboard.DashboardLink:
    url = runbook_url + (f"#{anchor}" if anchor else "")
    return (
        dashboard.DashboardLink(title)
        .type(dm.DashboardLinkType.LINK)
        .url(url)
        .icon("doc")
        .tooltip("docs/runbook.md: what each alert means and what to do")
        .target_blank(True)
    )


def alert_links(runbook_url: str, *alertnames: str) -> list[Any]:
    """Panel links to the runbook sections of the alerts this panel explains (the runbook's
    headings are the alert names, so GitHub's anchors are their lower-case forms)."""
    return [runbook_link(runbook_url, f"Runbook: {name}", name.lower()) for name in alertnames]


def dashboards_link() -> dashboard.DashboardLink:
    return (
        dashboard.DashboardLink("pinwatch dashboards")
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags(TAGS)
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    )


def base_dashboard(uid: str, title: str, description: str, runbook_url: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .timezone("browser")
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .annotation(alert_annotation())
        .link(runbook_link(runbook_url))
        .link(dashboards_link())
    )


def prometheus_dashboard(
    uid: str, title: str, description: str, runbook_url: str
) -> dashboard.Dashboard:
    """A dashboard over Prometheus only: its datasource variable, then app and host."""
    d = base_dashboard(uid, title, description, runbook_url).with_variable(
        prometheus_datasource_variable()
    )
    for variable in prometheus_app_host_variables():
        d = d.with_variable(variable)
    return d


# --- targets -----------------------------------------------------------------------------------


def promql(
    expr: str, legend: str = "__auto", ref_id: str = "A", instant: bool = False
) -> prometheus.Dataquery:
    query = (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref_id)
        .datasource(PROMETHEUS)
    )
    return query.instant() if instant else query.range()


class ClickHouseQuery(cogvariants.Dataquery):
    """A raw-SQL query in grafana-clickhouse-datasource's (v4) query model."""

    def __init__(self, sql: str, ref_id: str, query_type: Literal["table", "timeseries"]):
        self.sql = sql
        self.ref_id = ref_id
        self.query_type = query_type

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": CLICKHOUSE,
            "editorType": "sql",
            # sqlutil formats: 0 time series (long rows become one series per string column),
            # 1 table.
            "format": 0 if self.query_type == "timeseries" else 1,
            "queryType": "timeseries" if self.query_type == "timeseries" else "table",
            "pluginVersion": CLICKHOUSE_PLUGIN_VERSION,
            "rawSql": self.sql,
            "refId": self.ref_id,
        }


def sql(
    text: str, ref_id: str = "A", timeseries_format: bool = False
) -> cogbuilder.Builder[cogvariants.Dataquery]:
    query_type: Literal["table", "timeseries"] = "timeseries" if timeseries_format else "table"
    return _Built[cogvariants.Dataquery](ClickHouseQuery(_dedent(text), ref_id, query_type))


def _dedent(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines()]
    return "\n".join(line for line in lines if line)


# --- panels ------------------------------------------------------------------------------------

Datasource = Literal["prometheus", "clickhouse"]


def _ref(source: Datasource) -> dm.DataSourceRef:
    return PROMETHEUS if source == "prometheus" else CLICKHOUSE


def _panel(
    builder: Any,
    panel_id: int,
    title: str,
    description: str,
    unit: str,
    targets: list[Any],
    source: Datasource,
    width: int,
    height: int,
    links: list[Any] | None,
) -> Any:
    """What every panel has: id, title, description, unit, datasource variable, targets."""
    panel = (
        builder.id(panel_id)
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(_ref(source))
        .targets(targets)
        .span(width)
        .height(height)
    )
    return panel.links(links) if links else panel


def graph(
    panel_id: int,
    title: str,
    description: str,
    unit: str,
    targets: list[Any],
    *,
    source: Datasource = "prometheus",
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    links: list[Any] | None = None,
) -> timeseries.Panel:
    panel = (
        _panel(
            timeseries.Panel(),
            panel_id,
            title,
            description,
            unit,
            targets,
            source,
            width,
            height,
            links,
        )
        .min(0)
        .fill_opacity(15 if stacked else 8)
        .line_width(1)
        .legend(
            common.VizLegendOptions()
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(StackingMode.NORMAL))
    return panel


def single_stat(
    panel_id: int,
    title: str,
    description: str,
    unit: str,
    targets: list[Any],
    *,
    source: Datasource = "prometheus",
    width: int = 6,
    height: int = 4,
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: list[dm.ValueMap] | None = None,
    links: list[Any] | None = None,
) -> stat.Panel:
    steps = thresholds or [(None, "green")]
    panel = (
        _panel(
            stat.Panel(), panel_id, title, description, unit, targets, source, width, height, links
        )
        .graph_mode(BigValueGraphMode.AREA)
        .color_mode(BigValueColorMode.VALUE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(
            dashboard.ThresholdsConfig()
            .mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps])
        )
    )
    return panel.mappings(mappings) if mappings else panel


def grid(
    panel_id: int,
    title: str,
    description: str,
    unit: str,
    targets: list[Any],
    *,
    source: Datasource = "clickhouse",
    width: int = 12,
    height: int = 9,
    column_units: dict[str, str] | None = None,
    links: list[Any] | None = None,
    hide_columns: tuple[str, ...] = (),
) -> table.Panel:
    panel = (
        _panel(
            table.Panel(), panel_id, title, description, unit, targets, source, width, height, links
        )
        .show_header(True)
        .cell_height(TableCellHeight.SM)
    )
    for column, column_unit in (column_units or {}).items():
        panel = panel.override_by_name(
            column, [dm.DynamicConfigValue(id_val="unit", value=column_unit)]
        )
    for column in hide_columns:
        panel = panel.override_by_name(
            column, [dm.DynamicConfigValue(id_val="custom.hidden", value=True)]
        )
    return panel


def bars(
    panel_id: int,
    title: str,
    description: str,
    unit: str,
    targets: list[Any],
    *,
    source: Datasource = "clickhouse",
    width: int = 12,
    height: int = 9,
) -> bargauge.Panel:
    return (
        _panel(
            bargauge.Panel(),
            panel_id,
            title,
            description,
            unit,
            targets,
            source,
            width,
            height,
            None,
        )
        .min(0)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(True))
    )


def row(panel_id: int, title: str) -> dashboard.Row:
    return dashboard.Row(title).id(panel_id)
