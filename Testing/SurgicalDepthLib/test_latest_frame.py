"""Tests of SurgicalDepthLib.latest_frame: the one latest-frame mailbox of the live front ends."""
from __future__ import annotations

import threading
import time

import pytest

from SurgicalDepthLib.latest_frame import LatestFrameMailbox


def test_a_newer_frame_replaces_the_waiting_one():
    """Catches a mailbox that queues frames (a consumer that falls behind forever) or loses the newest one."""
    box: LatestFrameMailbox[int] = LatestFrameMailbox()
    assert box.take() is None and len(box) == 0
    assert [box.put(i) for i in range(4)] == [False, True, True, True]  # True: a waiting frame was dropped
    assert len(box) == 1
    assert box.take() == 3
    assert box.take() is None  # delivered once
    assert box.put(4) is False and box.clear() == 1 and box.take() is None


def test_one_slot_per_source_served_longest_waiting_first():
    """Catches sources sharing one slot (one camera's frames dropping another's) and a fast source starving a
    slow one: a source whose frame is replaced keeps its place in line."""
    box: LatestFrameMailbox[str] = LatestFrameMailbox()
    box.put("a1", key="A")
    box.put("b1", key="B")
    assert box.put("a2", key="A") is True  # replaces a1; A still waited longest
    assert [box.take(), box.take(), box.take()] == ["a2", "b1", None]


def test_put_back_goes_first_unless_a_newer_frame_came():
    """Catches a frame taken but not used (another frame size: a new stream) being lost, queued behind other
    sources, or delivered in place of a newer frame of its own source."""
    box: LatestFrameMailbox[str] = LatestFrameMailbox()
    box.put("b1", key="B")
    assert box.put_back("a1", key="A") is False
    assert box.take() == "a1" and box.take() == "b1"
    box.put("a3", key="A")
    assert box.put_back("a2", key="A") is True  # a2 is older than the waiting a3: dropped
    assert box.take() == "a3" and box.take() is None


def test_take_waits_for_a_frame_and_times_out():
    """Catches a consumer that busy-loops or sleeps a fixed time instead of waking up when a frame comes."""
    box: LatestFrameMailbox[int] = LatestFrameMailbox()
    start = time.monotonic()
    assert box.take(timeout=0.05) is None and time.monotonic() - start >= 0.04
    timer = threading.Timer(0.05, box.put, args=(7,))
    timer.start()
    start = time.monotonic()
    assert box.take(timeout=10.0) == 7 and time.monotonic() - start < 5.0
    timer.join()


def test_slow_consumer_gets_the_newest_frame():
    """Catches a slow consumer handed an old frame: of the frames put while it is busy, only the last is kept."""
    box: LatestFrameMailbox[int] = LatestFrameMailbox()
    busy, ready, taken = threading.Event(), threading.Event(), []

    def consumer() -> None:
        for _ in range(3):
            taken.append(box.take(timeout=10.0))
            busy.set()  # "inference" on the frame taken, until the producer has put the next burst
            ready.wait(10.0)
            ready.clear()

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    assert box.put(0) is False
    assert busy.wait(10.0)
    for first, burst in ((1, 5), (6, 20)):
        busy.clear()
        assert [box.put(first + i) for i in range(burst)] == [False] + [True] * (burst - 1)
        ready.set()  # the consumer is free: it takes what waits
        assert busy.wait(10.0)
    ready.set()
    thread.join(10.0)
    assert taken == [0, 5, 25] and box.take() is None


@pytest.mark.parametrize("keys", [1, 3])
def test_concurrent_frames_delivered_at_most_once_and_in_order(keys):
    """Catches races between put and take: a frame delivered twice, an older frame delivered after a newer one
    of its source, a frame neither delivered nor counted as dropped, or the newest frame lost at the end."""
    box: LatestFrameMailbox[tuple[int, int]] = LatestFrameMailbox()
    n, producers, dropped, taken = 3000, [], [0] * keys, []
    done = threading.Event()

    def produce(key: int) -> None:
        for i in range(n):
            dropped[key] += box.put((key, i), key=key)
            if i % 97 == 0:
                time.sleep(0.001)  # let the consumer in at varied points

    def consume() -> None:
        while not done.is_set() or len(box):
            frame = box.take(timeout=0.01)
            if frame is not None:
                taken.append(frame)
                time.sleep(0.0002)  # slower than the producers

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    for key in range(keys):
        producers.append(threading.Thread(target=produce, args=(key,), daemon=True))
        producers[-1].start()
    for thread in producers:
        thread.join(30.0)
    done.set()
    consumer.join(30.0)
    assert not consumer.is_alive()
    for key in range(keys):
        mine = [i for k, i in taken if k == key]
        assert mine == sorted(set(mine))  # strictly increasing: never twice, never older after newer
        assert mine[-1] == n - 1  # the newest frame is always delivered
        assert len(mine) + dropped[key] == n  # every frame delivered or dropped, none lost
        assert dropped[key] > 0  # the consumer was slower: frames were replaced


def test_max_sources_bounds_the_frames_waiting():
    """Catches a mailbox that keeps one frame per source key without a limit: OpenIGTLink device names come from
    peers, and a client sending under ever new names (300 names, a model at 2 frames/s) queued 297 frames in the
    depth service (68 MB of 320x240 frames; 1.8 GB at 1080p). At ``max_sources`` a new source's frame drops the one
    that has waited longest."""
    box: LatestFrameMailbox[str] = LatestFrameMailbox(max_sources=2)
    assert [box.put("a", key="A"), box.put("b", key="B"), box.put("c", key="C")] == [False, False, True]
    assert len(box) == 2
    assert box.put("b2", key="B") is True and len(box) == 2  # its own source's frame: replaced, nothing else
    assert box.put_back("d", key="D") is True  # full: the frame put back is the one dropped
    assert [box.take(), box.take(), box.take()] == ["b2", "c", None]
    with pytest.raises(ValueError, match="max_sources"):
        LatestFrameMailbox(max_sources=0)
