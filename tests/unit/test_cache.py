"""The identity lookups' TTL cache (``gateway.identity.cache``) on a fake clock: hits and
misses kept for the TTL and not a moment longer, bounded with the oldest entry out first."""

from __future__ import annotations

import pytest

from gateway.identity.cache import MISS, TTLCache
from tests.support.fakes import FakeClock


def _cache(ttl: float = 5.0, size: int = 10) -> tuple[TTLCache[str, str], FakeClock]:
    clock = FakeClock()
    return TTLCache(ttl, size, clock), clock


def test_an_entry_lives_for_exactly_the_ttl() -> None:
    cache, clock = _cache(ttl=5.0)
    assert cache.get("k") is MISS
    cache.put("k", "v")
    clock.now += 4.999
    assert cache.get("k") == "v"
    clock.now += 0.001
    assert cache.get("k") is MISS


def test_a_miss_is_cached_as_none_for_the_ttl_too() -> None:
    cache, clock = _cache(ttl=2.0)
    cache.put("ghost", None)
    assert cache.get("ghost") is None  # known absent: no lookup needed
    clock.now += 2.0
    assert cache.get("ghost") is MISS


def test_putting_again_restarts_the_ttl() -> None:
    cache, clock = _cache(ttl=5.0)
    cache.put("k", "old")
    clock.now += 4
    cache.put("k", "new")
    clock.now += 4
    assert cache.get("k") == "new"


def test_the_oldest_put_leaves_first_and_a_read_does_not_refresh_it() -> None:
    cache, _ = _cache(size=2)
    cache.put("a", "1")
    cache.put("b", "2")
    assert cache.get("a") == "1"
    cache.put("c", "3")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (MISS, "2", "3")
    cache.put("b", "2'")  # put again: now the newest
    cache.put("d", "4")
    assert (cache.get("b"), cache.get("c"), cache.get("d")) == ("2'", MISS, "4")


@pytest.mark.parametrize(("ttl", "size"), [(0.0, 10), (-1.0, 10), (5.0, 0)])
def test_no_ttl_or_no_room_caches_nothing(ttl: float, size: int) -> None:
    cache, _ = _cache(ttl=ttl, size=size)
    cache.put("k", "v")
    cache.put("ghost", None)
    assert cache.get("k") is MISS and cache.get("ghost") is MISS


def test_clear_forgets_everything() -> None:
    cache, _ = _cache()
    cache.put("k", "v")
    cache.put("ghost", None)
    cache.clear()
    assert cache.get("k") is MISS and cache.get("ghost") is MISS
