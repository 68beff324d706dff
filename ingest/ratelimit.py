"""Request rate limits per key, in bounded memory: one instance per app, per device (the keyed
device hash) and per client network (the truncated prefix).

Each key is a token bucket of `burst` requests refilled at `per_second`, kept as the one number
that describes it (the generic cell rate algorithm): the moment the bucket would be full again,
pushed one interval later by each request let through. A key may send while that moment is no
more than `burst - 1` intervals ahead; a refused request costs nothing, and its wait is how far
beyond that the moment lies. One float per key instead of (tokens, last refill).

At most `max_keys` keys are kept, least recently seen first out (an `OrderedDict` moved to the
end on every request). A key pushed out starts with a full bucket when it comes back, which is
what it would have had anyway unless it sent within the last `burst / per_second` seconds:
pushing a flooding device out takes `max_keys` other keys between two of its requests, and new
keys from one network are bounded by that network's own limit.
"""

from __future__ import annotations

import math
from collections import OrderedDict


class TokenBuckets:
    __slots__ = ("per_second", "burst", "max_keys", "_interval", "_tolerance", "_full_at")

    def __init__(self, per_second: float, burst: int, max_keys: int) -> None:
        if per_second <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a rate limit needs per_second > 0, burst >= 1 and max_keys >= 1")
        self.per_second = per_second
        self.burst = burst
        self.max_keys = max_keys
        self._interval = 1.0 / per_second
        self._tolerance = (burst - 1) * self._interval
        self._full_at: OrderedDict[str, float] = OrderedDict()

    def take(self, key: str, now: float) -> int | None:
        """None when `key` may send one more request at `now` (monotonic seconds), else the
        whole seconds until it may (for `Retry-After`; at least 1)."""
        full_at = self._full_at
        at = full_at.get(key)
        if at is None:
            if len(full_at) >= self.max_keys:
                full_at.popitem(last=False)
            full_at[key] = now + self._interval
            return None
        full_at.move_to_end(key)
        if at < now:
            at = now
        wait = at - now - self._tolerance
        if wait > 1e-9:  # not a rounding error of `burst` intervals added up
            return max(1, math.ceil(wait))
        full_at[key] = at + self._interval
        return None

    def __len__(self) -> int:
        return len(self._full_at)


def limiter(per_second: float, burst: int, max_keys: int) -> TokenBuckets | None:
    """The limit a setting describes; None when its rate is 0 (off)."""
    return TokenBuckets(per_second, burst, max_keys) if per_second > 0 else None
