"""How pinwatch's long-running processes tune Python's cycle collector. Both allocate many
short-lived objects that reference counting frees, and both lose a large share of their time to
the collector's default thresholds rescanning what survives; each gets the policy its own
benchmark measured best. What startup allocated is frozen out of the scans. Process-wide, so the
commands call these, never a library."""

from __future__ import annotations

import asyncio
import gc

# ingest: at Python's default threshold (700) the collector ran every dozen requests and scanned
# the survivors each time; at 50,000 single-report POSTs went 15-20 % faster
# (benchmarks/bench_ingest.py, alternating runs). Young cycles (exception tracebacks) stay
# bounded by the threshold.
REQUEST_THRESHOLD = (50_000, 20, 20)

# consumer: a couple of dozen containers per report; with the default thresholds the collector
# ran ~800 times per 100,000 reports, a third of the consumer's time, and raised thresholds
# still left a tenth (benchmarks/bench_consumer.py). So it runs on a timer instead: a full
# collection a minute costs tens of milliseconds and keeps memory bounded, since cycles still
# happen (asyncio futures holding tracebacks).
COLLECT_EVERY_SECONDS = 60.0


def for_requests() -> None:
    """Ingest's policy: a high first-generation threshold."""
    gc.freeze()
    gc.set_threshold(*REQUEST_THRESHOLD)


def for_batches() -> None:
    """The consumer's policy: no automatic collection; run `collect_periodically` beside it."""
    gc.freeze()
    gc.disable()


async def collect_periodically(interval: float = COLLECT_EVERY_SECONDS) -> None:
    while True:
        await asyncio.sleep(interval)
        gc.collect()
