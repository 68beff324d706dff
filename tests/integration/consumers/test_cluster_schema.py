"""The cluster form of the frozen migrations (`pinwatch migrate --cluster`), checked with the
real ClickHouse engine (chDB). No Keeper and no second server run here, so Replicated and
Distributed tables cannot be created: every cluster statement is parsed by the engine instead,
and one shard's share of the schema (the `_local` tables and the views that fill them) is built
for real, with the Distributed names standing as views over them, to run the same rows and the
same queries as a single node and compare the answers."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumers.migrations import MIGRATIONS, plan
from consumers.migrations.cluster import NoClusterForm, render
from consumers.rollout.analysis import analyze
from consumers.rollout.request import build_request
from consumers.schema import REPORT_COLUMN_NAMES, REPORT_COLUMN_TYPES
from consumers.store import Store
from dashboards.interpolate import Selection, clickhouse_sql
from pinwatch.policy import load_policy
from pinwatch.settings import Settings
from tests.support.names import REPORT_ONLY_HOST, TEST_APP, TEST_HOST
from tests.support.paths import REPO

CLUSTER = "pinwatch_cluster"
_DISTRIBUTED = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+) ON CLUSTER '\w+' AS \1\.(\w+) "
    r"ENGINE = Distributed\('\w+', '\w+', '(\w+)', (.+)\)$"
)


def test_every_migration_has_a_cluster_form_and_others_are_refused() -> None:
    for migration in MIGRATIONS:
        for statement in migration.statements:
            assert render(statement), statement
    with pytest.raises(NoClusterForm, match="ALTER TABLE"):
        render("ALTER TABLE {db}.reports ADD COLUMN `extra` String")


def test_cluster_tables_are_replicated_local_tables_behind_distributed_ones(
    make_settings: Callable[..., Settings],
) -> None:
    statements = plan(make_settings(), CLUSTER)
    assert all(" ON CLUSTER 'pinwatch_cluster'" in s for s in statements if "CREATE" in s)
    local = {}
    distributed = {}
    for statement in statements:
        if (m := _DISTRIBUTED.match(statement)) is not None:
            assert m.group(3) == m.group(4), "a Distributed table names its local table twice"
            distributed[m.group(2)] = (m.group(4), m.group(5))
        elif m := re.match(r"CREATE TABLE IF NOT EXISTS \w+\.(\w+_local) ", statement):
            local[m.group(1)] = statement
            assert "ENGINE = Replicated" in statement and "{shard}" in statement
            assert "non_replicated_deduplication_window" not in statement
            assert "replicated_deduplication_window = 1000" in statement
        elif "MATERIALIZED VIEW" in statement:
            names = re.findall(r"\b\w+\.(\w+)\b", statement.split(" AS\n", 1)[1])
            target = re.search(r"\nTO \w+\.(\w+) AS", statement).group(1)  # type: ignore[union-attr]
            assert target.endswith("_local") and all(n.endswith("_local") for n in names)
    assert {f"{name}_local" for name in distributed} == set(local)
    # Reports are sharded by device: a device's reports and its sketches stay on one shard.
    assert distributed["reports"] == ("reports_local", "cityHash64(device)")
    assert distributed["evidence"] == ("evidence_local", "cityHash64(host, leaf_pin)")


async def test_every_cluster_statement_parses_in_the_engine(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = Store.from_settings(settings)
    try:
        for statement in plan(settings, CLUSTER):
            formatted = await store.scalar("SELECT formatQuery({q:String})", {"q": statement})
            assert "ON CLUSTER" in formatted or formatted.startswith("INSERT"), formatted
    finally:
        await store.close()


def one_shard(statement: str, db: str) -> str:
    """What one shard runs, as chDB can run it: no ON CLUSTER, the plain engine for the
    Replicated one, the Distributed name as a view over the local table."""
    if (m := _DISTRIBUTED.match(statement)) is not None:
        return f"CREATE VIEW IF NOT EXISTS {db}.{m.group(2)} AS SELECT * FROM {db}.{m.group(4)}"
    statement = statement.replace(f" ON CLUSTER '{CLUSTER}'", "")
    statement = re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'\)", r"\1", statement)
    return re.sub(rf"^INSERT INTO {db}\.(\w+) ", rf"INSERT INTO {db}.\1_local ", statement)


def _rows(now_ms: int) -> list[list[Any]]:
    """Reports as the consumer writes them: rotation failures from several devices and
    networks on the enforced host, report-only successes and would-fail reports, an error."""
    rows = []
    for i in range(24):
        failing = i % 3 == 0
        report_only = i % 2 == 1
        host = REPORT_ONLY_HOST if report_only else TEST_HOST
        row: dict[str, Any] = {
            "id": f"r{i}",
            "received_at": now_ms - i * 1000,
            "event_at": None,
            "sent_at": None,
            "app_id": TEST_APP,
            "app_version": f"5.{i % 3}.0",
            "platform": "ios" if i % 2 else "android",
            "os_version": "18",
            "device": f"device-{i % 9}",
            "network": "wifi",
            "client_network": f"203.0.{i % 5}.0/24",
            "host": host,
            "policy_host": host,
            "port": 443,
            "kind": "pin_validation",
            "format": "native",
            "result": "pin_mismatch" if failing else "ok",
            "pin_match": "none" if failing else "primary",
            "enforced": 0 if report_only else 1,
            "phase": "report_only" if report_only else "enforce",
            "cause": "rotation_suspected" if failing else "",
            "observed_pins": [f"pin-{int(failing)}"],
            "client_pins": [],
            "client_pins_consistent": 1,
            "leaf_pin": f"pin-{int(failing)}",
            "chain_public_root": 1,
            "error": "",
            "detail": "",
            "count": 1 + i % 4,
            "kafka_topic": "t",
            "kafka_partition": 0,
            "kafka_offset": i,
        }
        rows.append([row[name] for name in REPORT_COLUMN_NAMES])
    return rows


async def test_queries_on_the_cluster_names_answer_as_on_one_node(
    make_settings: Callable[..., Settings],
) -> None:
    single = make_settings()
    shard = single.model_copy(update={"clickhouse_database": single.clickhouse_database + "_c"})
    store = Store.from_settings(single)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rows = _rows(int(now.timestamp() * 1000))
    try:
        await store.migrate(single)
        await store.insert("reports", rows, REPORT_COLUMN_NAMES, column_types=REPORT_COLUMN_TYPES)
        db = shard.clickhouse_database
        for statement in plan(shard, CLUSTER):
            await store.command(one_shard(statement, db))
        # What a shard's local table receives from the Distributed insert.
        await Store(store.url, db).insert(
            "reports_local", rows, REPORT_COLUMN_NAMES, column_types=REPORT_COLUMN_TYPES
        )

        async def answers(settings: Settings) -> dict[str, Any]:
            scoped = Store(store.url, settings.clickhouse_database)
            policy = load_policy(settings.policy_file)
            req = build_request(policy, REPORT_ONLY_HOST, since="1h", now=now)
            rollout = (await analyze(scoped, req, settings)).to_dict()
            rollout.pop("timings", None)
            rollout.pop("query_seconds", None)
            failing = await scoped.query(
                "SELECT app_id, policy_host, cause, uniqMerge(devices), "
                "uniqMerge(client_networks) FROM {db}.rollup_minute "
                "WHERE kind = 'pin_validation' AND result != 'ok' AND enforced = 1 "
                "GROUP BY app_id, policy_host, cause"
            )
            panels = {}
            model = json.loads((REPO / "dashboards/json/pinwatch-rollout.json").read_text())
            selection = Selection.from_dashboard(model, database=settings.clickhouse_database)
            for panel in model["panels"]:
                for target in panel.get("targets", []):
                    if "rawSql" in target:
                        sql = clickhouse_sql(
                            target["rawSql"], selection, now - dt.timedelta(hours=1), now
                        )
                        panels[panel["title"]] = await scoped.query(sql)
            return {"rollout": rollout, "failing": failing, "panels": panels}

        one, cluster = await answers(single), await answers(shard)
        assert one["failing"] and one["rollout"]["would_fail"]["would_fail_devices"] > 0
        assert sorted(cluster["failing"]) == sorted(one["failing"])
        for part in ("panels", "rollout"):
            for key in one[part]:
                assert cluster[part][key] == one[part][key], (part, key)
    finally:
        await store.close()


def test_consumer_and_query_sql_only_name_tables_the_cluster_form_has(
    make_settings: Callable[..., Settings],
) -> None:
    """Every `{db}.table` and `${database}.table` the code and the dashboards read or write
    exists under that name in the cluster form (as a Distributed table)."""
    names = {
        m.group(2)
        for s in plan(make_settings(), CLUSTER)
        if (m := _DISTRIBUTED.match(s)) is not None
    }
    used: dict[str, set[str]] = {}
    sources = [*Path(REPO / "consumers").rglob("*.py"), *Path(REPO / "dashboards/json").glob("*")]
    for path in sources:
        if "migrations" in path.parts:
            continue
        for table in re.findall(r"(?:\{db\}|\$\{database\})\.(\w+)", path.read_text()):
            if table != "table":  # docstrings say "write `{db}.table`"
                used.setdefault(table, set()).add(str(path.relative_to(REPO)))
    assert {"reports", "evidence", "rollup_minute", "rollout_hourly"} <= set(used)
    missing = {t: sorted(p) for t, p in used.items() if t not in names}
    assert missing == {}
