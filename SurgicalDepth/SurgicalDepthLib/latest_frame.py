"""The latest-frame policy of the live front ends, in one place: a mailbox that keeps only the newest frame.

A live source (an OpenIGTLink client, a Slicer volume that updates) produces frames faster than the model can
take them. Queueing them would make the latency grow without bound; the mailbox keeps one waiting frame per source
instead: a newer frame replaces the waiting one (which is dropped, never delivered), so whenever the consumer is
ready it takes the newest frame there is, and each frame is delivered at most once.

Used by :class:`~SurgicalDepthLib.live.DepthService` (one slot per OpenIGTLink device) and
:class:`~SurgicalDepthLib.live_worker.LiveWorker` (one slot).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["LatestFrameMailbox"]

T = TypeVar("T")


class LatestFrameMailbox(Generic[T]):
    """Thread-safe mailbox with one slot per source ``key`` (one source: leave ``key`` at its default).

    :meth:`put` replaces its source's waiting frame; :meth:`take` removes and returns the frame of the source that
    has waited longest (a source whose frame is replaced keeps its place in line, so a fast source cannot starve a
    slow one). Any number of threads may put and take.

    Args:
        max_sources: most frames waiting (None: no limit). Source keys may come from peers (OpenIGTLink device
            names): a frame of a new source when this many wait drops the one that has waited longest, so that a
            peer sending under ever new names cannot queue frames without bound.
    """

    def __init__(self, max_sources: int | None = None) -> None:
        if max_sources is not None and max_sources < 1:
            raise ValueError(f"max_sources must be None or >= 1, got {max_sources}")
        self._slots: OrderedDict[Hashable, T] = OrderedDict()
        self._cond = threading.Condition()
        self._max = max_sources

    def _full(self, key: Hashable) -> bool:
        """A frame of ``key`` would exceed ``max_sources`` (called with the lock held)."""
        return self._max is not None and key not in self._slots and len(self._slots) >= self._max

    def put(self, frame: T, key: Hashable = None) -> bool:
        """Offer the newest ``frame`` of source ``key``; returns True when it replaced (dropped) a waiting one: its
        source's, or at ``max_sources`` the one that has waited longest."""
        with self._cond:
            replaced = key in self._slots or self._full(key)
            if self._full(key):
                self._slots.popitem(last=False)
            self._slots[key] = frame
            self._cond.notify_all()
            return replaced

    def put_back(self, frame: T, key: Hashable = None) -> bool:
        """Return a ``frame`` that was taken but not used: it goes first in line, unless a newer frame of ``key``
        came meanwhile (or ``max_sources`` frames wait); then ``frame`` is dropped and True returned."""
        with self._cond:
            if key in self._slots or self._full(key):
                return True
            self._slots[key] = frame
            self._slots.move_to_end(key, last=False)
            self._cond.notify_all()
            return False

    def take(self, timeout: float | None = 0.0) -> T | None:
        """Remove and return the frame of the source that has waited longest, waiting up to ``timeout`` seconds
        (None: until one comes) for one; None when there is none by then."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._slots, timeout):
                return None
            return self._slots.popitem(last=False)[1]

    def clear(self) -> int:
        """Drop every waiting frame; returns how many there were."""
        with self._cond:
            n = len(self._slots)
            self._slots.clear()
            return n

    def __len__(self) -> int:
        """Frames waiting (at most one per source)."""
        with self._cond:
            return len(self._slots)
