"""The commit step: counted only once committed, kept for later when a commit fails."""

from __future__ import annotations

from aiokafka.errors import CommitFailedError, KafkaConnectionError

from consumers.metrics import ConsumerMetrics
from consumers.steps import Batch, Committer


def batch(partition: int, first: int, last: int, reports: int) -> Batch:
    b = Batch()
    b.first[("t", partition)], b.last[("t", partition)] = first, last
    b.tally.kinds["pin_validation"] = reports
    b.tally.messages = last - first + 1
    return b


def inserted(metrics: ConsumerMetrics) -> float:
    value = metrics.registry.get_sample_value(
        "pinwatch_consumer_inserted_reports_total", {"kind": "pin_validation"}
    )
    return value or 0.0


async def test_counts_move_with_the_commit_and_survive_a_transient_failure() -> None:
    metrics = ConsumerMetrics()
    commits: list[dict[tuple[str, int], int]] = []
    failures = [KafkaConnectionError()]

    async def commit(offsets: dict[tuple[str, int], int]) -> None:
        if failures:
            raise failures.pop()
        commits.append(offsets)

    committer = Committer(commit, metrics, interval=3600)
    committer.stage(batch(0, 0, 4, 50))
    await committer.maybe_commit()  # the interval counts from the start: not yet
    assert commits == [] and committer.pending
    await committer.maybe_commit(force=True)  # fails
    assert commits == [] and inserted(metrics) == 0  # nothing counted, and kept
    committer.stage(batch(0, 5, 9, 30))
    committer.stage(batch(1, 0, 0, 7))
    await committer.maybe_commit()  # within the interval: waits
    assert commits == []
    await committer.maybe_commit(force=True)
    assert commits == [{("t", 0): 10, ("t", 1): 1}]
    assert inserted(metrics) == 87


async def test_a_commit_rejected_by_a_rebalance_is_left_to_the_new_owner() -> None:
    metrics = ConsumerMetrics()

    async def commit(offsets: dict[tuple[str, int], int]) -> None:
        raise CommitFailedError("rebalanced")

    committer = Committer(commit, metrics, interval=0.001)
    committer.stage(batch(0, 0, 4, 50))
    await committer.maybe_commit(force=True)
    assert inserted(metrics) == 0 and not committer.pending
