"""The consumer end to end: native batches POSTed to the real ingest, through the real broker,
classified and stored in real chDB, counted on the consumer's /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from consumers.consumer import Consumer
from devstack.certs import CertificateAuthority, Chain
from devstack.clients import native_batch, network_error, pin_validation
from pinwatch.record import Record, encode_batch, encode_batch_v1
from pinwatch.settings import Settings
from pinwatch.topics import admin_client, ensure_topics
from tests.support.names import REPORT_ONLY_HOST, TEST_APP, TEST_HOST
from tests.support.payloads import kafka_record
from tests.support.pipeline import Pipeline, group_caught_up, produce, read_topic, run_pipeline
from tests.support.polling import eventually

SUBDOMAIN = f"eu.{TEST_HOST}"  # covered by TEST_HOST's include_subdomains
UNPINNED = "unpinned.example.org"  # in no policy entry


def _cases(ca: CertificateAuthority) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(report as POSTed, what its `reports` row and metric labels must say)."""
    public = ca.chain("rotated")
    no_root = Chain(public.certs[:2])  # served chains usually omit the root
    return [
        (
            pin_validation(TEST_HOST, ca.chain("primary"), count=240),
            dict(pin_match="primary", cause="", enforced=1, policy_host=TEST_HOST, public=1),
        ),
        (
            pin_validation(TEST_HOST, ca.chain("backup"), count=7),
            dict(pin_match="backup", cause="", enforced=1, policy_host=TEST_HOST, public=1),
        ),
        (
            pin_validation(TEST_HOST, public, result="pin_mismatch", count=3),
            dict(pin_match="none", cause="rotation_suspected", enforced=1, public=1),
        ),
        (
            pin_validation(TEST_HOST, no_root, result="pin_mismatch", count=2),
            dict(pin_match="none", cause="rotation_suspected", enforced=1, public=1),
        ),
        (
            pin_validation(TEST_HOST, ca.intercepted_chain(), result="pin_mismatch", count=5),
            dict(pin_match="none", cause="interception_suspected", enforced=1, public=0),
        ),
        (
            pin_validation(
                TEST_HOST, public, result="pin_mismatch", with_chain=False, enforced=False
            ),
            dict(pin_match="none", cause="unknown", enforced=0, public=0),
        ),
        (
            # no `enforced` in the report: the host's phase (report_only) decides
            pin_validation(REPORT_ONLY_HOST, public, result="pin_mismatch", enforced=None),
            dict(pin_match="none", cause="rotation_suspected", enforced=0, phase="report_only"),
        ),
        (
            pin_validation(SUBDOMAIN, ca.chain("primary"), count=4),
            dict(pin_match="primary", cause="", enforced=1, policy_host=TEST_HOST),
        ),
        (
            pin_validation(UNPINNED, public, enforced=None),
            dict(pin_match="", cause="", enforced=0, policy_host="", phase=""),
        ),
    ]


async def test_reports_are_classified_stored_rolled_up_and_counted(
    pipeline: Pipeline, ca: CertificateAuthority
) -> None:
    p = pipeline
    settings = p.settings
    cases = _cases(ca)
    errors = [
        network_error(TEST_HOST, "timeout", count=3),
        network_error(TEST_HOST, "dns", count=2),
        network_error(UNPINNED, "tls", count=6),
    ]
    pins = [report for report, _ in cases]
    devices = ["device-a", "device-b"]
    # the same reports from two devices, on two app versions
    await p.post(native_batch(pins + errors, app=TEST_APP, device=devices[0]))
    second = [dict(r, id=r["id"] + "-2") for r in pins + errors]
    await p.post(
        native_batch(second, app=TEST_APP, device=devices[1], version="5.3.0", platform="android")
    )
    n_reports = 2 * (len(pins) + len(errors))
    await p.wait_inserted(n_reports, timeout=60)

    rows = await p.store.query_dicts(
        "SELECT id, host, policy_host, kind, result, pin_match, enforced, phase, cause, "
        "chain_public_root, leaf_pin, observed_pins, count, device, error "
        "FROM {db}.reports"
    )
    assert len(rows) == n_reports
    by_id = {row["id"]: row for row in rows}
    for report, want in cases:
        for rid in (report["id"], report["id"] + "-2"):
            row = by_id[rid]
            assert row["pin_match"] == want["pin_match"], (report["host"], row)
            assert row["cause"] == want["cause"], (report["host"], row)
            assert row["enforced"] == want["enforced"], (report["host"], row)
            assert row["count"] == report["count"]
            if "policy_host" in want:
                assert row["policy_host"] == want["policy_host"]
            if "phase" in want:
                assert row["phase"] == want["phase"]
            if "public" in want:
                assert row["chain_public_root"] == want["public"], (report["host"], row)
            if "served_chain" in report:
                # pins are computed from the chain itself, leaf first
                assert row["observed_pins"] == report["observed_pins"]
                assert row["leaf_pin"] == report["observed_pins"][0]
            assert row["device"] not in devices  # keyed hash, never the id as sent
    assert {r["error"] for r in rows if r["kind"] == "network_error"} == {
        "timeout",
        "dns",
        "tls",
    }

    # rollups add up to the raw table, per kind, and count both devices
    sent = 2 * sum(r["count"] for r in pins + errors)
    raw_total = await p.store.scalar("SELECT sum(count) FROM {db}.reports")
    rolled = await p.store.query(
        "SELECT kind, sum(count), uniqMerge(devices) FROM {db}.rollup_minute GROUP BY kind "
        "ORDER BY kind"
    )
    assert raw_total == sent
    assert rolled == [
        ("network_error", 2 * sum(r["count"] for r in errors), 2),
        ("pin_validation", 2 * sum(r["count"] for r in pins), 2),
    ]
    hourly = await p.store.scalar("SELECT sum(count) FROM {db}.evidence_hourly")
    assert hourly == sent
    # evidence keeps full chains for a sample, per host, leaf pin and hour
    evidence = await p.store.query(
        "SELECT host, leaf_pin, count() FROM {db}.evidence GROUP BY host, leaf_pin"
    )
    assert evidence and all(n <= settings.evidence_per_pin_hour for _, _, n in evidence)

    # /metrics: exactly what was sent, pin failures and network errors apart
    metric = p.metric
    pin_total = 2 * sum(r["count"] for r in pins)
    assert await metric("pinwatch_pin_validations_total") == pin_total
    assert await metric("pinwatch_network_errors_total") == 2 * sum(r["count"] for r in errors)
    assert await metric(
        "pinwatch_pin_validations_total",
        host=TEST_HOST,
        result="pin_mismatch",
        cause="rotation_suspected",
        enforced="true",
    ) == 2 * (3 + 2)
    assert await metric("pinwatch_pin_validations_total", cause="interception_suspected") == 10
    assert await metric("pinwatch_pin_validations_total", cause="unknown", enforced="false") == 2
    assert (
        await metric("pinwatch_pin_validations_total", host=REPORT_ONLY_HOST, enforced="false") == 2
    )
    # a subdomain counts under its policy entry; a host outside the policy is `other`
    assert await metric("pinwatch_pin_validations_total", host=SUBDOMAIN) == 0
    assert await metric("pinwatch_pin_validations_total", host="other", pin_match="unknown") == 2
    assert await metric("pinwatch_pin_validations_total", cause="none", result="ok") == 2 * (
        240 + 7 + 4 + 1
    )
    assert await metric("pinwatch_pin_validations_total", app_version="5.3.0") == pin_total / 2
    assert await metric("pinwatch_network_errors_total", host=TEST_HOST, category="timeout") == 6
    assert await metric("pinwatch_network_errors_total", host="other", category="tls") == 12
    assert await metric("pinwatch_consumer_inserted_reports_total") == n_reports
    assert await metric("pinwatch_consumer_consumed_records_total") == 2
    assert await metric("pinwatch_consumer_dead_lettered_total") == 0
    assert await metric("pinwatch_consumer_last_insert_timestamp_seconds") > 0
    assert await metric("pinwatch_consumer_paused") == 0

    # distinct failing devices/networks (enforced failures, last 5 minutes) from ClickHouse
    assert p.consumer is not None
    await p.consumer.refresh_failing()
    assert await metric("pinwatch_failing_devices", host=TEST_HOST, cause="rotation_suspected") == 2
    assert (
        await metric("pinwatch_failing_devices", host=TEST_HOST, cause="interception_suspected")
        == 2
    )
    assert await metric("pinwatch_failing_networks", host=TEST_HOST, cause="unknown") == 0
    assert await metric("pinwatch_failing_devices", host=REPORT_ONLY_HOST) == 0

    # lag per partition, in records, once the consumer caught up (updated every second)
    for _ in range(50):
        lags = [
            line
            for line in (await p.metrics_text()).splitlines()
            if line.startswith("pinwatch_consumer_lag{")
        ]
        if len(lags) == settings.kafka_partitions:
            break
        await asyncio.sleep(0.1)
    assert len(lags) == settings.kafka_partitions
    assert all(f'topic="{settings.kafka_topic}"' in line for line in lags)
    assert await metric("pinwatch_consumer_lag") == 0


def _record(ca: CertificateAuthority, **overrides: Any) -> Record:
    """An enforced pin mismatch from one device, serving the rotated (public) chain."""
    values: dict[str, Any] = dict(
        enforced=True, device="hashed-device-1", served_chain=ca.chain("rotated").b64
    )
    return kafka_record(app_id=TEST_APP, host=TEST_HOST, **{**values, **overrides})


async def test_undecodable_records_go_to_the_dead_letter_topic_and_the_rest_flows(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    settings = make_settings()
    good = [_record(ca) for _ in range(3)]
    mixed = orjson.loads(encode_batch_v1([good[1]]))  # a version 1 envelope, edited as JSON
    mixed["records"].append({"kind": "no_such_kind", "id": "broken"})
    values = [
        encode_batch([good[0]]),
        b"\x00 this is not a record batch",
        orjson.dumps(mixed),
        encode_batch([_record(ca, served_chain=["bm90IGEgY2VydGlmaWNhdGU="])]),
        encode_batch([good[2]]),
    ]
    async with run_pipeline(settings, ingest=False) as p:
        await produce(settings, values)
        await p.wait_inserted(3)
        ids = {r[0] for r in await p.store.query("SELECT id FROM {db}.reports")}
        assert ids == {r.id for r in good}
        dead = await read_topic(settings, settings.kafka_dead_letter_topic, 3)
        reasons = sorted(dict(m.headers)["pinwatch-reason"].decode() for m in dead)
        assert reasons == ["invalid_record", "unclassifiable_record", "undecodable_message"]
        for message in dead:
            headers = dict(message.headers)
            assert headers["pinwatch-detail"]
            assert headers["pinwatch-source"].decode().startswith(settings.kafka_topic + "/")
        garbage = next(
            m for m in dead if dict(m.headers)["pinwatch-reason"] == b"undecodable_message"
        )
        assert garbage.value == values[1]  # kept as received, for replay after a fix
        assert await p.metric("pinwatch_consumer_dead_lettered_total") == 3
        assert await p.metric("pinwatch_consumer_dead_lettered_total", reason="invalid_record") == 1
        assert await p.metric("pinwatch_pin_validations_total") == 3


async def test_consumer_stops_and_says_why_when_dead_letters_pass_the_limit(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(dead_letter_min_records=3, dead_letter_max_ratio=0.5)
    async with run_pipeline(settings, ingest=False) as p:
        await produce(settings, [b"garbage %d" % i for i in range(4)])
        assert p.consumer is not None
        await p.wait_consumer_stopped(30)
        assert p.consumer.fatal is not None
        assert settings.kafka_dead_letter_topic in p.consumer.fatal
        assert "undecodable_message" in p.consumer.fatal
        async with httpx.AsyncClient(base_url=p.consumer_url) as client:
            ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "dead-letter" in ready.text or settings.kafka_dead_letter_topic in ready.text


async def test_clickhouse_outage_pauses_consumption_and_resumes_without_loss(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    settings = make_settings(clickhouse_retry_max_seconds=0.5, batch_max_seconds=0.2)
    async with run_pipeline(settings) as p:
        await p.post(native_batch([pin_validation(TEST_HOST, ca.chain("primary"))], app=TEST_APP))
        await p.wait_inserted(1)
        # A real fault: the table inserts go to disappears from the server.
        await p.store.command("DETACH TABLE {db}.reports")
        batches = [
            native_batch(
                [
                    pin_validation(TEST_HOST, ca.chain("rotated"), result="pin_mismatch", count=2)
                    for _ in range(5)
                ],
                app=TEST_APP,
            )
            for _ in range(4)
        ]
        for batch in batches:
            await p.post(batch)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await p.metric("pinwatch_consumer_insert_errors_total") >= 2:
                break
            await asyncio.sleep(0.1)
        assert await p.metric("pinwatch_consumer_paused") == 1
        assert await p.metric("pinwatch_consumer_insert_errors_total") >= 2
        async with httpx.AsyncClient(base_url=p.consumer_url) as client:
            assert (await client.get("/readyz")).status_code == 503
        # nothing counted that is not stored
        assert await p.metric("pinwatch_pin_validations_total", result="pin_mismatch") == 0

        await p.store.command("ATTACH TABLE {db}.reports")
        await p.wait_inserted(21, timeout=60)
        assert await p.store.scalar("SELECT sum(count) FROM {db}.reports") == 41
        assert await p.store.scalar("SELECT sum(count) FROM {db}.rollup_minute") == 41
        assert await p.metric("pinwatch_pin_validations_total", result="pin_mismatch") == 40
        assert await p.metric("pinwatch_consumer_paused") == 0
        async with httpx.AsyncClient(base_url=p.consumer_url) as client:
            assert (await client.get("/readyz")).status_code == 200


async def test_api_serves_health_and_mounts_the_rollout_query_api(pipeline: Pipeline) -> None:
    async with httpx.AsyncClient(base_url=pipeline.consumer_url) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        # the rollout router is mounted and guarded by the admin token
        assert (await client.get(f"/v1/rollout/{TEST_HOST}")).status_code == 401
        token = {"Authorization": f"Bearer {pipeline.settings.admin_token.get_secret_value()}"}
        answer = await client.get(f"/v1/rollout/{TEST_HOST}", headers=token)
        assert answer.status_code == 200, answer.text


async def test_a_rebalance_between_two_consumers_counts_everything_once(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    settings = make_settings(kafka_partitions=4, batch_max_seconds=0.3)
    chain = ca.chain("rotated")

    def batch(i: int) -> dict[str, Any]:
        reports = [pin_validation(TEST_HOST, chain, result="pin_mismatch", count=3)]
        reports.append(pin_validation(TEST_HOST, ca.chain("primary"), count=5))
        return native_batch(reports, app=TEST_APP, device=f"device-{i}")

    async with run_pipeline(settings) as p:
        for i in range(20):
            await p.post(batch(i))
        # a second member joins the group while the first is consuming
        second = Consumer(settings, p.store)
        await second.start()
        task = asyncio.create_task(second.run())
        try:
            # the group rebalanced: the second member owns partitions, the first fewer
            assert await eventually(lambda: second.assignment, timeout=60), "no rebalance"
            for i in range(20, 40):
                await p.post(batch(i))
            assert p.consumer is not None
            registries = [p.consumer.metrics.registry, second.metrics.registry]

            def counted(name: str, **labels: str) -> float:
                return sum(r.get_sample_value(name, labels) or 0 for r in registries)

            # Every message committed by one member or the other: counts are final now, so a
            # double count would show.
            assert await eventually(lambda: group_caught_up(settings), timeout=60)
            assert second.assignment, "the second consumer never got partitions"
            assert counted("pinwatch_consumer_inserted_reports_total", kind="pin_validation") == 80
            pins = "pinwatch_pin_validations_total"
            base = dict(app=TEST_APP, host=TEST_HOST, platform="ios", app_version="5.2.0")
            failures = dict(base, result="pin_mismatch", pin_match="none", enforced="true")
            assert counted(pins, **failures, cause="rotation_suspected") == 40 * 3
            ok = dict(base, result="ok", pin_match="primary", enforced="true", cause="none")
            assert counted(pins, **ok) == 40 * 5
        finally:
            second.stop()
            with contextlib.suppress(Exception):
                await task
        assert await p.store.scalar("SELECT count() FROM {db}.reports") == 80
        assert await p.store.scalar("SELECT uniqExact(id) FROM {db}.reports") == 80
        assert await p.store.scalar("SELECT sum(count) FROM {db}.rollup_minute") == 40 * 8


async def test_progress_left_by_an_older_topic_of_the_same_name_does_not_skip_reports(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    settings = make_settings()
    async with run_pipeline(settings, consumer=False) as ingest:
        # ClickHouse remembers offsets up to 1000 of a topic by this name that is gone now
        # (Kafka's data wiped, ClickHouse's kept): its offsets start at 0 again.
        await ingest.store.insert(
            "kafka_progress",
            [[settings.kafka_topic, p, 1000] for p in range(settings.kafka_partitions)],
            ["kafka_topic", "kafka_partition", "max_offset"],
        )
        for _ in range(3):
            await ingest.post(
                native_batch([pin_validation(TEST_HOST, ca.chain("primary"))], app=TEST_APP)
            )
    async with run_pipeline(settings, ingest=False) as p:
        await p.wait_inserted(3)
        assert await p.store.scalar("SELECT count() FROM {db}.reports") == 3
        assert await p.metric("pinwatch_pin_validations_total") == 3


async def _recreate_topic(settings: Settings, seconds: float = 60) -> None:
    """Delete the test's topic and create it again, empty (offsets from 0)."""
    async with admin_client(settings) as admin:
        await admin.delete_topics([settings.kafka_topic])
        deadline = time.monotonic() + seconds
        while settings.kafka_topic in await admin.list_topics():
            assert time.monotonic() < deadline, "the topic was not deleted"
            await asyncio.sleep(0.2)
    await ensure_topics(settings)


async def test_a_recreated_topic_starting_with_a_retry_still_stores_what_follows(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    """A message whose reports are all retries of stored ids has no row at its offset, and does
    not prove the stored progress stale; the next message without rows at its offset does."""
    settings = make_settings(kafka_partitions=1, batch_max_seconds=0.2)

    def batch(count: int) -> dict[str, Any]:
        return native_batch(
            [pin_validation(TEST_HOST, ca.chain("rotated"), result="pin_mismatch", count=count)],
            app=TEST_APP,
        )

    w, x, n = batch(1), batch(2), batch(4)
    async with run_pipeline(settings) as p:
        await p.post(w)
        await p.post(x)  # offset 1 of the old topic
        await p.wait_inserted(2)
    await _recreate_topic(settings)  # Kafka's data gone, ClickHouse's progress (offset 1) kept
    async with run_pipeline(settings) as p:
        await p.post(x)  # the client retries x: offset 0, no row there
        await p.post(n)  # offset 1: no row there, and new
        deadline = time.monotonic() + 60
        while await p.metric("pinwatch_consumer_consumed_records_total") < 2:
            assert time.monotonic() < deadline, "the new topic's messages were never committed"
            await asyncio.sleep(0.1)
        assert await p.metric("pinwatch_consumer_inserted_reports_total") == 1
        assert await p.metric("pinwatch_consumer_duplicate_reports_total") == 1
        assert await p.metric("pinwatch_pin_validations_total") == 4
        assert await p.store.scalar("SELECT count() FROM {db}.reports") == 3
        assert await p.store.scalar("SELECT sum(count) FROM {db}.rollup_minute") == 1 + 2 + 4
