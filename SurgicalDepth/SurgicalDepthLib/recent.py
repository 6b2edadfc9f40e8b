"""A bounded cache of what was made last: :class:`RecentlyUsed` keeps at most ``capacity`` values by key and drops
the least recently used first. The live service, the live worker and the OpenVINO backend hold per frame size (or
per source) state in it, so a client that sends ever new sizes or device names cannot grow it without bound."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentlyUsed(Generic[K, V]):
    """At most ``capacity`` values by key, the least recently used dropped first. Not thread-safe: a caller shared
    between threads holds its own lock around :meth:`get`."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value of ``key``, made by ``make()`` when absent (and kept; then the least recently used beyond
        ``capacity`` goes); either way ``key`` becomes the most recently used."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()  # first: a make() that raises leaves the cache as it was
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def keys(self) -> list[K]:
        """The keys, least recently used first."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
