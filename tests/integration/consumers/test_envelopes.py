"""Upgrade: messages of every envelope on one topic, as at the releases that changed ingest's
(version 1, JSON records, already on Kafka; version 2, columns as msgpack lists; version 3,
columns as buffers; ingest writes the last two, by message size). A real consumer stores every
report of each once, counts a retry across envelopes once, and counts on /metrics what it
stored."""

from __future__ import annotations

from collections.abc import Callable

from devstack.certs import CertificateAuthority
from pinwatch.record import encode_batch_v1, encode_batch_v2, encode_batch_v3
from pinwatch.settings import Settings
from pinwatch.vocabulary import ErrorCategory, Kind, Result
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.payloads import kafka_record
from tests.support.pipeline import produce, run_pipeline
from tests.support.polling import eventually


async def test_every_envelope_interoperates_on_one_topic(
    make_settings: Callable[..., Settings], ca: CertificateAuthority
) -> None:
    settings = make_settings(batch_max_seconds=0.2)
    rotated = ca.chain("rotated")

    def record(**overrides: object) -> object:
        values = dict(app_id=TEST_APP, host=TEST_HOST, enforced=True, app_version="5.2.0")
        return kafka_record(**{**values, **overrides})

    old = [record(served_chain=rotated.b64, count=2) for _ in range(3)]
    between = [record(served_chain=rotated.b64, count=3, event_at_ms=None) for _ in range(2)]
    new = [record(served_chain=rotated.b64, count=5) for _ in range(3)]
    new.append(record(result=Result.OK, observed_pins=rotated.pins, count=40))
    new.append(record(kind=Kind.NETWORK_ERROR, result=None, error=ErrorCategory.TIMEOUT, count=7))
    retry_of_old = old[0]  # the same report, re-sent after the upgrade in the new envelope
    async with run_pipeline(settings, ingest=False) as p:
        await produce(
            settings,
            [
                encode_batch_v1(old),
                encode_batch_v2(between),
                encode_batch_v3(new),
                encode_batch_v3([retry_of_old, between[0]]),
                encode_batch_v1([new[0]]),  # and the other way round
                encode_batch_v2([new[1]]),
            ],
        )
        await p.wait_inserted(len(old) + len(between) + len(new))

        async def all_committed() -> bool:
            return await p.metric("pinwatch_consumer_consumed_records_total") == 6

        assert await eventually(all_committed)
        rows = await p.store.query(
            "SELECT id, count, cause, pin_match, observed_pins FROM {db}.reports ORDER BY id"
        )
        assert sorted(r[0] for r in rows) == sorted(r.id for r in old + between + new)
        by_id = {r[0]: r for r in rows}
        assert by_id[old[0].id][1:4] == (2, "rotation_suspected", "none")
        assert by_id[between[1].id][1:3] == (3, "rotation_suspected")
        assert by_id[new[0].id][4] == rotated.pins  # classified from the chain
        assert by_id[new[3].id][2:4] == ("", "none")
        assert await p.metric("pinwatch_consumer_duplicate_reports_total") == 4
        assert await p.metric("pinwatch_consumer_consumed_records_total") == 6
        pins = await p.metric("pinwatch_pin_validations_total", app=TEST_APP, host=TEST_HOST)
        assert pins == 3 * 2 + 2 * 3 + 3 * 5 + 40
        assert await p.metric("pinwatch_network_errors_total", category="timeout") == 7
