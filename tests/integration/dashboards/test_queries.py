"""Every query on every dashboard, run the way Grafana would run it, against the real engines
after real traffic: the pipeline (ingest -> Kafka -> consumer -> chDB) takes seeded reports in
waves, a real Prometheus scrapes ingest and consumer, and then

- each Prometheus target (variables rendered as Grafana renders them, `$__rate_interval` as the
  Prometheus datasource computes it) runs as a range query (instant for table panels);
- each ClickHouse target (`$__conditionalAll`, variables and the plugin's backend macros
  expanded as grafana-clickhouse-datasource expands them) runs in the same chDB the consumer
  wrote to.

Both with "All" selected and with one app and host picked from the variables' own queries.
No query may error, and every panel that the seeded traffic feeds must return data; the few
that stay empty in a healthy pipeline are named below with the reason.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client import start_http_server

from alerts.alertmanager import alertmanager_config
from alerts.config import CONFIG as ALERT_CONFIG
from alerts.generate import dump
from dashboards.interpolate import Selection, clickhouse_sql, grafana_interval, prometheus_expr
from devstack.certs import CertificateAuthority
from devstack.clients import native_batch, network_error, pin_validation
from devstack.localkafka import free_port
from devstack.monitoring import CONSUMER_JOB, INGEST_JOB, LocalAlertmanager, LocalPrometheus
from pinwatch.policy import load_policy
from pinwatch.roots import PublicRoots
from pinwatch.settings import Settings
from prober.ct.loglist import parse_log_list
from prober.ct.watch import Watcher
from prober.probe import Prober
from tests.support.ct_log import LoopbackLog, pre
from tests.support.names import OTHER_APP, OTHER_KEY, REPORT_ONLY_HOST, TEST_APP, TEST_HOST
from tests.support.paths import REPO
from tests.support.pipeline import run_pipeline
from tests.support.prober import write_policy
from tests.support.settings import settings_factory
from tests.support.tls_servers import TlsEdge, free_port_on

JSON_DIR = REPO / "dashboards" / "json"
SCRAPE_SECONDS = 1.0
WAVES = 4

# Panels with no data after healthy traffic, and why; every other panel must show data.
EMPTY_WHEN_HEALTHY = {
    ("pinwatch-pipeline", "Kafka produce errors"): "the broker never failed a produce",
}
PROBER_EDGE, DEAD_EDGE = "127.0.0.2", "127.0.0.3"

# Alert rules for the test Prometheus: one pinwatch-prefixed alert that always fires, so the
# alert panels and annotations are shown to select it, and one foreign alert they must ignore.
# The group is named like pinwatch's own, which the rule-evaluation panel follows.
PROBE_RULES = """\
groups:
  - name: pinwatch.dashboard-probe
    rules:
      - alert: PinwatchDashboardProbe
        expr: vector(1)
        labels: {severity: info}
        annotations: {summary: probe}
      - alert: SomeoneElsesAlert
        expr: vector(1)
        labels: {severity: page}
"""


@dataclass
class Seeded:
    pipeline: Any
    prometheus_url: str
    database: str
    start: datetime
    end: datetime


def _dashboard(uid: str) -> dict:
    return json.loads((JSON_DIR / f"{uid}.json").read_text())


def _batches(ca: CertificateAuthority, wave: int) -> list[tuple[dict, str]]:
    """One wave of traffic: what each dashboard panel is about, from several devices."""
    primary, backup, rotated = ca.chain("primary"), ca.chain("backup"), ca.chain("rotated")
    intercepted = ca.intercepted_chain()
    out: list[tuple[dict, str]] = []
    for device in range(3):
        version, platform = ("5.2.0", "ios") if device % 2 else ("5.3.0", "android")
        out.append(
            (
                native_batch(
                    [
                        pin_validation(TEST_HOST, primary, count=20),
                        pin_validation(TEST_HOST, backup, count=2),
                        # a rotation: publicly trusted chain on a key nobody pinned
                        pin_validation(TEST_HOST, rotated, result="pin_mismatch"),
                        pin_validation(TEST_HOST, None, result="chain_invalid"),
                        network_error(TEST_HOST, "timeout", count=2),
                        network_error(TEST_HOST, "dns"),
                        # report-only host: clients check but do not enforce; one device
                        # of three is served the rotated key
                        pin_validation(REPORT_ONLY_HOST, primary, enforced=False, count=10),
                        *(
                            [
                                pin_validation(
                                    REPORT_ONLY_HOST, rotated, result="pin_mismatch", enforced=False
                                )
                            ]
                            if device == 0
                            else []
                        ),
                    ],
                    app=TEST_APP,
                    version=version,
                    platform=platform,
                    device=f"device-{wave}-{device}",
                ),
                "",
            )
        )
    # a report-only device behind a TLS-inspecting proxy
    out.append(
        (
            native_batch(
                [
                    pin_validation(REPORT_ONLY_HOST, primary, enforced=False, count=3),
                    pin_validation(
                        REPORT_ONLY_HOST, intercepted, result="pin_mismatch", enforced=False
                    ),
                ],
                app=TEST_APP,
                device=f"corp-phone-{wave}",
            ),
            "",
        )
    )
    # an enforced one, from another app
    out.append(
        (
            native_batch(
                [
                    pin_validation(TEST_HOST, intercepted, result="pin_mismatch"),
                    pin_validation(TEST_HOST, primary, count=5),
                ],
                app=OTHER_APP,
                platform="android",
                device=f"corp-laptop-{wave}",
            ),
            OTHER_KEY,
        )
    )
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(
    kafka_bootstrap: str,
    chdb_dsn: str,
    policy_file: Path,
    public_roots_file: Path,
    ca: CertificateAuthority,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Seeded]:
    tmp = tmp_path_factory.mktemp("dashboards")
    make = settings_factory(kafka_bootstrap, chdb_dsn, policy_file, public_roots_file, tmp / "data")
    settings = make(failing_refresh_seconds=0.5)
    rules = tmp / "probe-rules.yml"
    rules.write_text(PROBE_RULES)
    # The prober: one edge of the test host serves the pinned chain, another accepts nothing.
    edge_port = free_port_on(PROBER_EDGE, DEAD_EDGE)
    prober = Prober(
        load_policy(
            write_policy(
                tmp / "probe-policy.yaml",
                ca,
                hosts={
                    TEST_HOST: ("enforce", edge_port),
                    REPORT_ONLY_HOST: ("report_only", edge_port),
                },
            )
        ),
        Settings(
            probe_timeout_seconds=2,
            probe_resolve={TEST_HOST: [PROBER_EDGE, DEAD_EDGE], REPORT_ONLY_HOST: [PROBER_EDGE]},
        ),
        roots=PublicRoots.load(public_roots_file),
    )
    probe_metrics, _ = start_http_server(0, "127.0.0.1", registry=prober.metrics.registry)
    # The CT watcher, on a loopback log holding one precertificate for the test host on a key
    # nobody pins.
    ct_log = LoopbackLog()
    ct_log.add(pre(ca, [TEST_HOST], "rotated", 1_790_000_000_000))
    watcher = Watcher(
        load_policy(policy_file),
        Settings(ct_state_dir=tmp / "ct", ct_start_at_beginning=True),
        parse_log_list(ct_log.log_list(tmp / "log_list.json").read_text(), "log list"),
    )
    await watcher.poll_all()
    ct_metrics, _ = start_http_server(0, "127.0.0.1", registry=watcher.metrics.registry)
    edge = TlsEdge(PROBER_EDGE, edge_port, ca, tmp / "edge").start()
    edge.serve("primary")
    # Alertmanager and Prometheus itself are scraped too: the meta-monitoring panels read them.
    alertmanager = LocalAlertmanager(tmp / "alertmanager", config=dump(alertmanager_config()))
    await asyncio.to_thread(alertmanager.start)
    prometheus_port = free_port()
    try:
        async with run_pipeline(settings) as p:
            prometheus = LocalPrometheus(
                tmp / "prometheus",
                port=prometheus_port,
                jobs={
                    INGEST_JOB: [p.ingest_url.removeprefix("http://")],
                    CONSUMER_JOB: [p.consumer_url.removeprefix("http://")],
                    ALERT_CONFIG.probe_job: [f"127.0.0.1:{probe_metrics.server_port}"],
                    ALERT_CONFIG.ct_job: [f"127.0.0.1:{ct_metrics.server_port}"],
                    ALERT_CONFIG.prometheus_job: [f"127.0.0.1:{prometheus_port}"],
                    ALERT_CONFIG.alertmanager_job: [alertmanager.url.removeprefix("http://")],
                },
                scrape_interval=SCRAPE_SECONDS,
                evaluation_interval=SCRAPE_SECONDS,
                rule_files=[rules],
                alertmanager_url=alertmanager.url,
            )
            await asyncio.to_thread(prometheus.start)
            try:
                start = datetime.now(UTC)
                sent = 0
                # Waves a few scrapes apart, so counters rise between scrapes and rates are
                # non-zero.
                for wave in range(WAVES):
                    for body, key in _batches(ca, wave):
                        await p.post(body, **({"key": key} if key else {}))
                        sent += len(body["reports"])
                    # one refused request per wave, for the rejections panel
                    await p.post({"app": {"id": TEST_APP}}, expect=400)
                    await prober.round()
                    await _wait_for_scrapes(prometheus.url, 3)
                await p.wait_inserted(sent, timeout=60)
                # the failing-devices gauge is read back from ClickHouse, then scraped
                await _wait_for_series(prometheus.url, "pinwatch_failing_devices", timeout=30)
                # what the consumer counted last is in the samples every panel reads
                await _wait_for_scrapes(prometheus.url, 3)
                yield Seeded(p, prometheus.url, settings.clickhouse_database, start, _now())
            finally:
                await asyncio.to_thread(prometheus.stop)
    finally:
        await asyncio.to_thread(alertmanager.stop)
        edge.stop()
        probe_metrics.shutdown()
        ct_metrics.shutdown()
        ct_log.stop()


def _now() -> datetime:
    return datetime.now(UTC)


async def _prometheus(url: str, path: str, params: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.get(path, params=params)
    body = response.json()
    if response.status_code != 200 or body.get("status") != "success":
        raise AssertionError(f"{path} {params}: {response.status_code} {body}")
    return body["data"]


async def _wait_for_scrapes(url: str, scrapes: int, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    """Until Prometheus has scraped the consumer `scrapes` more times (its `up` sample's
    timestamp moved on that often): counters sent before are in at least that many samples."""
    expr = f'timestamp(up{{job="{CONSUMER_JOB}"}})'
    seen: set[float] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = (await _prometheus(url, "/api/v1/query", {"query": expr}))["result"]
        if result:
            seen.add(float(result[0]["value"][1]))
            if len(seen) > scrapes:
                return
        await asyncio.sleep(SCRAPE_SECONDS / 4)
    raise AssertionError(f"Prometheus scraped the consumer {len(seen)} times in {timeout}s")


async def _wait_for_series(url: str, expr: str, timeout: float) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await _prometheus(url, "/api/v1/query", {"query": expr}))["result"]:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"Prometheus never returned {expr} within {timeout}s")


# --- Prometheus ----------------------------------------------------------------------------------


def _finite_values(data: dict) -> list[float]:
    values: list[float] = []
    for series in data["result"]:
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        values.extend(float(v) for _, v in points if math.isfinite(float(v)))
    return values


async def _label_values(s: Seeded, query: str, selection: Selection) -> list[str]:
    """What Grafana's Prometheus `label_values(selector, label)` variable query lists."""
    rendered = prometheus_expr(query, selection, (s.end - s.start).total_seconds(), SCRAPE_SECONDS)
    assert rendered.startswith("label_values(") and rendered.endswith(")"), rendered
    selector, _, label = rendered[len("label_values(") : -1].rpartition(",")
    series = await _prometheus(
        s.prometheus_url,
        "/api/v1/series",
        {"match[]": selector.strip(), "start": s.start.timestamp(), "end": s.end.timestamp()},
    )
    return sorted({row[label.strip()] for row in series if label.strip() in row})


async def _run_prometheus_target(s: Seeded, target: dict, selection: Selection) -> dict:
    range_seconds = (s.end - s.start).total_seconds()
    expr = prometheus_expr(target["expr"], selection, range_seconds, SCRAPE_SECONDS)
    assert "$" not in expr, f"unrendered variable in {expr}"
    if target.get("instant"):
        return await _prometheus(
            s.prometheus_url, "/api/v1/query", {"query": expr, "time": s.end.timestamp()}
        )
    return await _prometheus(
        s.prometheus_url,
        "/api/v1/query_range",
        {
            "query": expr,
            "start": s.start.timestamp(),
            "end": s.end.timestamp(),
            "step": grafana_interval(range_seconds, SCRAPE_SECONDS),
        },
    )


@pytest.mark.parametrize("uid", ["pinwatch-overview", "pinwatch-pipeline"])
@pytest.mark.parametrize("pick", ["all", "one"])
async def test_prometheus_panels_return_data(seeded: Seeded, uid: str, pick: str) -> None:
    model = _dashboard(uid)
    selection = Selection.from_dashboard(model)
    variables = {v["name"]: v for v in model["templating"]["list"]}
    apps = await _label_values(seeded, variables["app"]["query"], selection)
    assert {TEST_APP, OTHER_APP} <= set(apps)
    if pick == "one":
        selection.values["app"] = [TEST_APP]
    hosts = await _label_values(seeded, variables["host"]["query"], selection)
    assert TEST_HOST in hosts
    if pick == "one":
        selection.values["host"] = [TEST_HOST]

    empty = []
    for panel in model["panels"]:
        if panel["type"] == "row":
            continue
        results = [await _run_prometheus_target(seeded, t, selection) for t in panel["targets"]]
        has_data = any(_finite_values(r) for r in results)
        expected_empty = (uid, panel["title"]) in EMPTY_WHEN_HEALTHY
        if has_data == expected_empty:
            empty.append(f"{panel['title']}: {'data' if has_data else 'no data'}")
        if pick == "one":
            for result in results:
                for series in result["result"]:
                    labels = series["metric"]
                    assert labels.get("app", TEST_APP) == TEST_APP, (panel["title"], labels)
                    assert labels.get("host", TEST_HOST) == TEST_HOST, (panel["title"], labels)
    assert empty == [], "panels whose data is not what the seeded traffic implies"


async def test_overview_numbers_follow_the_seeded_traffic(seeded: Seeded) -> None:
    model = _dashboard("pinwatch-overview")
    selection = Selection.from_dashboard(model)
    selection.values.update(app=[TEST_APP], host=[TEST_HOST])
    by_title = {p["title"]: p for p in model["panels"]}

    async def last(title: str, ref: int = 0) -> dict[str, float]:
        result = await _run_prometheus_target(seeded, by_title[title]["targets"][ref], selection)
        out = {}
        for series in result["result"]:
            finite = [float(v) for _, v in series["values"] if math.isfinite(float(v))]
            if finite:
                out[json.dumps(series["metric"], sort_keys=True)] = max(finite)
        return out

    # per wave and device: 22 passing, 2 failing (rotation + chain invalid) enforced validations
    (share,) = (await last("Enforced pin failure share")).values()
    assert share == pytest.approx(2 / 24, rel=0.05)
    causes = await last("Failing devices by cause")
    assert any('"rotation_suspected"' in k and v >= 3 for k, v in causes.items()), causes
    matches = await last("Pin match over time")
    assert {json.loads(k)["pin_match"] for k in matches} == {"primary", "backup", "none"}
    categories = await last("Network errors by category")
    assert {json.loads(k)["category"] for k in categories} == {"timeout", "dns"}
    # The prober: one edge of the host serves the pinned primary key, the other never answers.
    edges = await last("Prober: edges by pin match")
    assert edges == {json.dumps({"host": TEST_HOST, "pin_match": "primary"}): 1.0}
    failures = await last("Prober: failed handshakes by reason")
    assert {json.loads(k)["reason"] for k in failures} == {"refused"}
    found = await _run_prometheus_target(
        seeded, by_title["CT: certificates issued on unpinned keys"]["targets"][0], selection
    )
    (finding,) = [s["metric"] for s in found["result"]]
    assert (finding["host"], finding["index"]) == (TEST_HOST, "0")


async def test_alert_panels_show_only_pinwatch_alerts(seeded: Seeded) -> None:
    model = _dashboard("pinwatch-overview")
    selection = Selection.from_dashboard(model)
    await _wait_for_series(seeded.prometheus_url, 'ALERTS{alertstate="firing"}', timeout=30)
    table = next(p for p in model["panels"] if p["title"] == "Active pinwatch alerts")
    result = await _run_prometheus_target(seeded, table["targets"][0], selection)
    assert {s["metric"]["alertname"] for s in result["result"]} == {"PinwatchDashboardProbe"}
    for uid in ("pinwatch-overview", "pinwatch-rollout", "pinwatch-pipeline"):
        (annotation,) = _dashboard(uid)["annotations"]["list"]
        data = await _run_prometheus_target(
            seeded, {"expr": annotation["expr"]}, Selection.from_dashboard(model)
        )
        assert {s["metric"]["alertname"] for s in data["result"]} == {"PinwatchDashboardProbe"}


# --- ClickHouse ----------------------------------------------------------------------------------


async def _run_sql(s: Seeded, sql: str, selection: Selection) -> list[dict[str, Any]]:
    rendered = clickhouse_sql(sql, selection, s.start, s.end)
    assert "$" not in rendered, f"unexpanded macro or variable in {rendered}"
    return await s.pipeline.store.query_dicts(rendered)


def _has_data(rows: list[dict[str, Any]]) -> bool:
    """At least one positive number: a lone aggregate row of 0 or NULL is a panel saying
    'nothing', not data."""
    for row in rows:
        for value in row.values():
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                return True
    return False


@pytest.mark.parametrize("pick", ["all", "one"])
async def test_clickhouse_panels_return_data(seeded: Seeded, pick: str) -> None:
    model = _dashboard("pinwatch-rollout")
    selection = Selection.from_dashboard(model, database=seeded.database)
    variables = {v["name"]: v for v in model["templating"]["list"]}

    apps = [r["app_id"] for r in await _run_sql(seeded, variables["app"]["query"], selection)]
    assert {TEST_APP, OTHER_APP} <= set(apps)
    selection.options["app"] = apps
    if pick == "one":
        selection.values["app"] = [TEST_APP]
    host_rows = await _run_sql(seeded, variables["host"]["query"], selection)
    hosts = [r["policy_host"] for r in host_rows]
    assert REPORT_ONLY_HOST in hosts
    selection.options["host"] = hosts
    if pick == "one":
        selection.values["host"] = [REPORT_ONLY_HOST]

    problems = []
    for panel in model["panels"]:
        if panel["type"] == "row":
            continue
        rows = []
        for target in panel["targets"]:
            rows.extend(await _run_sql(seeded, target["rawSql"], selection))
        if not _has_data(rows):
            problems.append(f"{panel['title']}: no data")
        if pick == "one":
            for row in rows:
                assert row.get("policy_host", REPORT_ONLY_HOST) == REPORT_ONLY_HOST, row
                assert row.get("app_id", TEST_APP) == TEST_APP, row
    assert problems == []


async def test_rollout_numbers_follow_the_seeded_traffic(seeded: Seeded) -> None:
    model = _dashboard("pinwatch-rollout")
    selection = Selection.from_dashboard(model, database=seeded.database)
    by_title = {p["title"]: p for p in model["panels"]}

    async def rows(title: str) -> list[dict[str, Any]]:
        return await _run_sql(seeded, by_title[title]["targets"][0]["rawSql"], selection)

    # report-only, per wave: 4 devices, one served the rotated key, one behind a proxy
    (share,) = await rows("Would-fail share")
    assert share["would_fail_share"] == pytest.approx(1 / 4)
    (devices,) = await rows("Report-only devices")
    assert devices["device_count"] == WAVES * 4
    (failing,) = await rows("Devices that would fail")
    assert failing["would_fail_devices"] == WAVES
    (intercepted,) = await rows("Devices behind interception")
    assert intercepted["intercepted_devices"] == WAVES
    versions = {r["app_version"]: r for r in await rows("Would-fail share by app version")}
    assert set(versions) == {"5.2.0", "5.3.0"}
    # devices 0 and 2 of each wave run 5.3.0, device 0 fails; device 1 and the proxied one 5.2.0
    assert versions["5.3.0"]["would_fail_share"] == pytest.approx(1 / 2)
    assert versions["5.2.0"]["would_fail_devices"] == 0
    assert versions["5.2.0"]["interception_share"] == pytest.approx(1 / 2)
    observed = await rows("Observed leaf pins per host")
    matches = {(r["policy_host"], r["pin_match"]) for r in observed}
    assert (REPORT_ONLY_HOST, "primary") in matches and (REPORT_ONLY_HOST, "none") in matches
    surprises = await rows("Surprise chains")
    causes = {r["cause"] for r in surprises}
    assert {"rotation_suspected", "interception_suspected"} <= causes
    # Staged enforcement: every validation of the enforced host is the enforced cohort, of the
    # report-only host the report-only one; chain_invalid and interception are left out.
    cohorts = {(r["policy_host"], r["cohort"]): r for r in await rows("Cohorts per host")}
    assert set(cohorts) == {(TEST_HOST, "enforced cohort"), (REPORT_ONLY_HOST, "report-only")}
    # per wave: 3 devices with 22 ok and 1 rotated mismatch, another app's 5 ok and 1 proxied
    enforced = cohorts[(TEST_HOST, "enforced cohort")]
    assert (enforced["validations"], enforced["mismatches"]) == (WAVES * 75, WAVES * 3)
    assert enforced["mismatch_share"] == pytest.approx(3 / 75)
    # per wave: 3 devices with 10 ok (one also a rotated mismatch), a proxied one with 3 ok
    report_only = cohorts[(REPORT_ONLY_HOST, "report-only")]
    assert (report_only["validations"], report_only["mismatches"]) == (WAVES * 35, WAVES)
