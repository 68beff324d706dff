"""A real broker failover: a three-node KRaft cluster on loopback (three combined
broker+controller nodes), topics with replication 3 and min ISR 2, `pinwatch ingest` and
`pinwatch consume` as processes under a steady load of native batches. The node leading
partition 0 of the reports topic is SIGKILLed, left down 15 s and started again.

Reconciled by report id against ClickHouse: every report that got a 202 is stored exactly once;
while ingest cannot reach the in-sync replicas it answers 503 with Retry-After and nothing
else; ingest and the consumer recover by themselves (every batch the client retried was
acknowledged in the end, and the consumer inserts again). This is `benchmarks/drill_faults.py
--fault broker-failover`, whose figures docs/reliability.md quotes; the test asserts the
promises, not the timings. About 90 s."""

from __future__ import annotations

from pathlib import Path

from benchmarks.drill_faults import drill, parse_args


async def test_one_node_of_three_killed_and_restarted_under_load_loses_nothing(
    tmp_path: Path,
) -> None:
    args = parse_args(
        ["--fault", "broker-failover", "--warmup", "10", "--down", "15", "--after", "15"]
    )
    r = await drill("broker-failover", args, tmp_path)

    assert (r.topic.partitions, r.topic.replication, r.topic.min_insync_replicas) == (3, 3, 2)
    assert r.acknowledged > 1000, r
    assert (r.missing, r.doubled) == (0, 0), r
    assert r.stored == r.acknowledged
    # Only 202s and 503s with Retry-After; ingest never stopped answering.
    assert r.unexpected == 0 and set(r.statuses) <= {202, 503}, r.statuses
    # Recovered by itself: each batch met a 202 within its retries, so every report sent was
    # acknowledged, and the consumer inserted again after the node's return.
    assert r.abandoned == 0 and r.acknowledged == r.sent, r
    assert r.consumer_back_s is not None, r
