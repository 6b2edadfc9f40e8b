"""``RecentlyUsed``: the bounded cache behind the live service's, the live worker's and OpenVINO's per-size state."""
from __future__ import annotations

import pytest

from SurgicalDepthLib.recent import RecentlyUsed


def test_keeps_the_most_recently_used_and_makes_each_value_once():
    """Catches a cache that drops the oldest *inserted* key instead of the least recently *used* (a size in steady
    use evicted by a passing one and its setup, e.g. an OpenVINO compilation, redone every few frames), one that
    makes a value again while it is kept, and one that grows past its capacity."""
    made = []
    cache: RecentlyUsed[str, str] = RecentlyUsed(2)

    def get(key: str) -> str:
        return cache.get(key, lambda: made.append(key) or key.upper())

    assert [get(k) for k in ("a", "b", "a", "c", "a", "b")] == ["A", "B", "A", "C", "A", "B"]
    assert made == ["a", "b", "c", "b"]  # "a" used before "c" came: "b" went, "a" stayed
    assert cache.keys() == ["a", "b"] and len(cache) == 2 and "c" not in cache


def test_a_failing_make_leaves_the_cache_as_it_was():
    """Catches a value inserted before it is made (a None entry left behind by a compilation that failed, returned
    to the next caller) and an eviction done for a value that never came."""
    cache: RecentlyUsed[int, int] = RecentlyUsed(1)
    cache.get(1, lambda: 10)
    with pytest.raises(RuntimeError):
        cache.get(2, lambda: (_ for _ in ()).throw(RuntimeError("no")))
    assert cache.keys() == [1] and cache.get(1, lambda: 0) == 10
    with pytest.raises(ValueError, match="capacity"):
        RecentlyUsed(0)
