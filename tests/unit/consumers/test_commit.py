"""The commit step: counted only once committed, kept for later when a commit fails."""

from __future__ import annotations

from aiokafka.errors import CommitFailedError, KafkaConnectionError

from consumers.batch import Batch
from consumers.metrics import BatchCounts, ConsumerMetrics
from consumers.steps import Commit


class Counted(Batch):
    """A written batch whose counts are given (what its parts would sum to)."""

    def __init__(self, counts: BatchCounts) -> None:
        super().__init__()
        self.counts = counts

    def tally(self) -> BatchCounts:
        return self.counts


def batch(partition: int, first: int, last: int, reports: int) -> Batch:
    counts = BatchCounts()
    counts.kinds["pin_validation"] = reports
    counts.messages = last - first + 1
    b = Counted(counts)
    b.first[("t", partition)], b.last[("t", partition)] = first, last
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

    committer = Commit(commit, metrics, interval=3600)
    await committer.submit(batch(0, 0, 4, 50))
    await committer.commit()  # the interval counts from the start: not yet
    assert commits == [] and committer.pending
    await committer.commit(force=True)  # fails
    assert commits == [] and inserted(metrics) == 0  # nothing counted, and kept
    await committer.submit(batch(0, 5, 9, 30))
    await committer.submit(batch(1, 0, 0, 7))
    await committer.commit()  # within the interval: waits
    assert commits == []
    await committer.commit(force=True)
    assert commits == [{("t", 0): 10, ("t", 1): 1}]
    assert inserted(metrics) == 87


async def test_a_commit_rejected_by_a_rebalance_is_left_to_the_new_owner() -> None:
    metrics = ConsumerMetrics()

    async def commit(offsets: dict[tuple[str, int], int]) -> None:
        raise CommitFailedError("rebalanced")

    committer = Commit(commit, metrics, interval=0.001)
    await committer.submit(batch(0, 0, 4, 50))
    await committer.commit(force=True)
    assert inserted(metrics) == 0 and not committer.pending
