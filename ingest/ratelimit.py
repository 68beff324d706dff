"""Per-app request rate limit: a token bucket per app id (bounded: one per app in the policy)."""

from __future__ import annotations

import math
import time


class RateLimiter:
    def __init__(self, per_second: float, burst: int) -> None:
        self.rate = per_second
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # app -> (tokens, last refill)

    def acquire(self, app_id: str) -> int | None:
        """None when the request may proceed, else the seconds to wait (Retry-After)."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        tokens, last = self._buckets.get(app_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[app_id] = (tokens, now)
            return max(1, math.ceil((1 - tokens) / self.rate))
        self._buckets[app_id] = (tokens - 1, now)
        return None
