"""Where a report's microseconds go: time per piece of the consumer (fetch, decode, dedup,
classify, columns, lookup, insert), for benchmarks/bench_consumer.py. Off by default: then
`measure` costs one attribute check per message or batch, never per report.

Pieces on the event loop are measured in CPU time of its thread; `lookup` and `insert` run on
the ClickHouse worker thread (chDB's own threads beside it), so they are wall-clock time of
the awaited call.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class Timings:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.seconds: Counter[str] = Counter()
        self.reports = 0

    @contextmanager
    def measure(self, piece: str, thread: bool = True) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        clock = time.thread_time if thread else time.perf_counter
        started = clock()
        try:
            yield
        finally:
            self.seconds[piece] += clock() - started

    def count(self, reports: int) -> None:
        self.reports += reports

    def per_report(self) -> dict[str, float]:
        """Microseconds per report decoded, per piece."""
        n = max(self.reports, 1)
        return {piece: s / n * 1e6 for piece, s in self.seconds.items()}

    def clear(self) -> None:
        self.seconds.clear()
        self.reports = 0
