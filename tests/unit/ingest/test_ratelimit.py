"""The rate limits' arithmetic and bounds (ingest/ratelimit.py), on a clock the test moves."""

from __future__ import annotations

import pytest

from ingest.ratelimit import TokenBuckets, limiter


def test_a_key_gets_its_burst_at_once_then_its_rate():
    limit = TokenBuckets(per_second=2, burst=5, max_keys=10)
    assert [limit.take("d", 100.0) for _ in range(5)] == [None] * 5
    assert limit.take("d", 100.0) == 1  # the next token in 0.5 s: whole seconds, rounded up
    assert limit.take("d", 100.4) == 1
    assert limit.take("d", 100.5) is None  # refusals cost nothing: one token came back
    assert limit.take("d", 100.5) == 1
    # sending exactly at the rate is always let through, faster is not
    assert all(limit.take("d", 100.5 + 0.5 * i) is None for i in range(1, 50))
    assert limit.take("d", 125.0) == 1


def test_a_long_wait_is_said_in_whole_seconds():
    limit = TokenBuckets(per_second=0.25, burst=2, max_keys=10)
    assert limit.take("d", 0.0) is None and limit.take("d", 0.0) is None
    assert limit.take("d", 0.0) == 4
    assert limit.take("d", 1.5) == 3  # 2.5 s to go


def test_the_bucket_refills_to_its_burst_and_no_further():
    limit = TokenBuckets(per_second=1, burst=3, max_keys=10)
    assert limit.take("d", 0.0) is None
    # idle for an hour: three requests at once again, not 3,600
    taken = [limit.take("d", 3600.0) for _ in range(4)]
    assert taken == [None, None, None, 1]


def test_keys_are_independent():
    limit = TokenBuckets(per_second=1, burst=1, max_keys=10)
    assert limit.take("flooding", 0.0) is None
    assert limit.take("flooding", 0.0) == 1
    assert limit.take("someone else", 0.0) is None


def test_retry_after_is_at_least_a_second_and_the_real_wait_when_longer():
    slow = TokenBuckets(per_second=0.1, burst=1, max_keys=10)
    assert slow.take("d", 0.0) is None
    assert slow.take("d", 0.0) == 10
    assert slow.take("d", 9.5) == 1
    fast = TokenBuckets(per_second=1000, burst=1, max_keys=10)
    assert fast.take("d", 0.0) is None
    assert fast.take("d", 0.0) == 1  # 1 ms to go, but Retry-After counts whole seconds


def test_a_burst_of_many_is_not_cut_short_by_rounding():
    limit = TokenBuckets(per_second=3, burst=10_000, max_keys=1)
    assert all(limit.take("d", 5.0) is None for _ in range(10_000))
    assert limit.take("d", 5.0) == 1


def test_memory_is_bounded_and_the_least_recently_seen_key_goes_first():
    limit = TokenBuckets(per_second=1, burst=1, max_keys=3)
    for key in ("a", "b", "c"):
        assert limit.take(key, 0.0) is None
    assert limit.take("a", 0.0) == 1  # a is refused, and now the most recently seen
    assert limit.take("d", 0.0) is None  # full: b, least recently seen, is forgotten
    assert len(limit) == 3
    assert limit.take("a", 0.0) == 1  # a is still remembered (and still limited)
    assert limit.take("c", 0.0) == 1
    assert limit.take("b", 0.0) is None  # b starts over with a full bucket
    for n in range(10_000):
        limit.take(f"spoofed-{n}", 1.0)
    assert len(limit) == 3


def test_a_rate_of_zero_turns_the_limit_off_and_nonsense_is_refused():
    assert limiter(0, 10, 10) is None
    assert isinstance(limiter(1, 10, 10), TokenBuckets)
    for args in ((0, 1, 1), (1, 0, 1), (1, 1, 0)):
        with pytest.raises(ValueError):
            TokenBuckets(*args)
