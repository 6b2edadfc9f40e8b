"""Counters and reply latencies of :class:`~SurgicalDepthLib.live.DepthService` (internal), and the record its
``stats()`` returns, :class:`DepthServiceStats` (public through :mod:`SurgicalDepthLib.live`)."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

COUNTS = ("frames_in", "frames_out", "dropped", "bad", "ignored", "lost", "refused")


@dataclass(frozen=True)
class DepthServiceStats:
    """What :meth:`DepthService.stats` returns: counters since start and rates over the last ``window_s`` seconds
    (latency: message fully received → depth reply sent)."""

    frames_in: int  # IMAGEs accepted
    frames_out: int  # depth replies sent
    dropped: int  # replaced in the mailbox by a newer frame of the same device (latest-frame policy), or dropped
    # there as the longest waiting when frames of too many devices wait (live._WAITING_SOURCES)
    bad: int  # IMAGEs skipped as malformed, corrupted (body CRC-64 differs from its header's) or unsupported
    ignored: int  # messages of other types
    lost: int  # accepted but not answered: the client left, or inference failed
    refused: int  # connections closed at once: as many clients as ``max_clients`` were connected
    clients: int
    fps: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    window_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lat = ("latency p50 -- p95 --" if self.latency_p50_ms is None
               else f"latency p50 {self.latency_p50_ms:.0f} ms p95 {self.latency_p95_ms:.0f} ms")
        refused = f" refused {self.refused}" if self.refused else ""
        return (f"stream: in {self.frames_in} out {self.frames_out} dropped {self.dropped} bad {self.bad} "
                f"lost {self.lost}{refused} | {self.fps:.1f} frames/s, {lat} | {self.clients} client(s)")


class ServiceCounters:
    """Thread-safe counts (:data:`COUNTS`) and the latencies of the replies sent (the last 100,000)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTS, 0)
        self._latencies: deque[tuple[float, float]] = deque(maxlen=100_000)  # (time sent, seconds)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def move(self, source: str, target: str) -> None:
        """One count moved from ``source`` to ``target`` (an IMAGE counted in, found corrupted when its turn came)."""
        with self._lock:
            self._counts[source] -= 1
            self._counts[target] += 1

    def replied(self, received: float) -> None:
        """A depth reply was sent now for a frame complete at ``received`` (``time.perf_counter()``)."""
        sent = time.perf_counter()
        with self._lock:
            self._counts["frames_out"] += 1
            self._latencies.append((sent, sent - received))

    def settle_lost(self) -> None:
        """At stop: every frame accepted but neither answered nor dropped counts as lost."""
        with self._lock:
            c = self._counts
            c["lost"] = c["frames_in"] - c["frames_out"] - c["dropped"]

    def snapshot(self, window: float, clients: int, running_s: float | None) -> DepthServiceStats:
        """The counts, and replies/s and latency percentiles over the last ``window`` seconds (or the
        ``running_s`` seconds since start, when shorter)."""
        now = time.perf_counter()
        recent: list[float] = []
        with self._lock:
            counts = dict(self._counts)
            for sent, latency in reversed(self._latencies):
                if sent < now - window:
                    break
                recent.append(latency)
        span = min(window, running_s) if running_s is not None else window
        p50, p95 = (np.percentile(recent, [50, 95]) * 1000).tolist() if recent else (None, None)
        return DepthServiceStats(**counts, clients=clients, fps=len(recent) / span if span > 0 else 0.0,
                                 latency_p50_ms=p50, latency_p95_ms=p95, window_s=window)
