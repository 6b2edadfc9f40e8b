"""Replies of :class:`~SurgicalDepthLib.live.DepthService` (internal): what a frame is answered with, made on a
few threads and sent in frame order (message layouts: the :mod:`SurgicalDepthLib.live` docstring; packing:
:mod:`SurgicalDepthLib._igtl`)."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._igtl import DEVICE_NAME_BYTES, Connection, pack_depth_image, pack_message, pack_point_cloud, reply_name
from ._live_stats import ServiceCounters
from .memory_budget import decimation_step
from .recent import RecentlyUsed

#: points per live cloud (a message per frame; memory_budget.DEFAULT_POINT_BUDGET is the Slicer runs')
LIVE_POINT_BUDGET = 20000
#: frame sizes whose point grid and camera are kept: a source whose frame size keeps changing must not grow the cache
SIZES_KEPT = 8


def decimation_grid(height: int, width: int, budget: int) -> np.ndarray:
    """bool ``[height, width]``: every ``step``-th pixel of every ``step``-th row, centred in the image, with the
    smallest step that keeps the count ``<= budget``; the same pixels for the same arguments."""
    if budget < 1:
        raise ValueError(f"point budget must be >= 1, got {budget}")
    step = decimation_step(height * width, budget)
    while ((height - 1) // step + 1) * ((width - 1) // step + 1) > budget:
        step += 1
    mask = np.zeros((height, width), bool)
    mask[(height - 1) % step // 2::step, (width - 1) % step // 2::step] = True
    return mask


@dataclass
class ReceivedFrame:
    """An IMAGE accepted by the service: its pixels and what its replies echo."""

    rgb: np.ndarray
    device: str
    timestamp: bytes  # raw header bytes, echoed
    coordinates: int
    geometry: bytes
    received: float  # time.perf_counter() when the message was complete
    conn: Connection
    body: Any = None  # the whole message body, until checked against ``crc`` (None: checked)
    crc: int = 0  # the CRC-64 its header announced

    @property
    def source(self) -> tuple[Connection, str]:
        """Where the frame came from: its connection and device (the service's key for its mailbox and mask)."""
        return self.conn, self.device


class ReplySender:
    """Turns each ``depth_stream`` output into its reply messages on ``threads`` threads and sends them to the
    frame's connection, each connection's in the order :meth:`submit` was called.

    A connection's replies wait only for that connection's earlier ones, and it has at most
    ``max(1, threads - 1)`` of them in the making or sending: a client that does not read (its sends block until
    ``io_timeout``) holds neither the other clients' replies nor every thread; its further replies are dropped.

    Args:
        threads: threads making replies; at most ``threads + 1`` replies are pending, then :meth:`submit` blocks
            (so that the service's mailbox drops frames instead of replies queueing up).
        counters: the service's counters (``frames_out`` with the latency, ``lost``).
        stop: the service's stop event: pending replies are abandoned (counted as lost) once it is set.
        once: the service's once-only logger ``once(level, key, msg, *args)``.
        points, point_budget, intrinsics: as :class:`~SurgicalDepthLib.live.DepthService`'s.
    """

    def __init__(self, threads: int, counters: ServiceCounters, stop: threading.Event,
                 once: Callable[..., None], *, points: bool, point_budget: int, intrinsics: Any):
        self.points, self.point_budget, self.intrinsics = points, point_budget, intrinsics
        self._counters, self._stop, self._once = counters, stop, once
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="DepthService.output")
        self._room = threading.Semaphore(threads + 1)
        self._send_turn = threading.Condition()
        self._per_connection = max(1, threads - 1)
        # per connection: [next number to give, next number to send, replies in the making or sending]
        self._order: dict[Connection, list[int]] = {}
        # (H, W) -> (grid, camera), the SIZES_KEPT sizes used last; the lock: several threads make replies
        self._grids: RecentlyUsed[tuple[int, int], tuple[np.ndarray, Any]] = RecentlyUsed(SIZES_KEPT)
        self._grids_lock = threading.Lock()

    def submit(self, out: Any, frame: ReceivedFrame) -> None:
        """Reply to ``frame`` with ``out`` (a ``DepthFrame``); called from one thread (the stream's)."""
        while not self._room.acquire(timeout=0.1):  # replies lag: block, so that the mailbox drops
            if self._stop.is_set():
                self._counters.add("lost")
                return
        with self._send_turn:
            for conn in [c for c, o in self._order.items() if c.closed and not o[2]]:  # gone while idle
                del self._order[conn]
            order = self._order.setdefault(frame.conn, [0, 0, 0])
            if order[2] >= self._per_connection:  # this client does not keep up: drop, as the mailbox does
                self._room.release()
                self._counters.add("dropped")
                return
            seq, order[0], order[2] = order[0], order[0] + 1, order[2] + 1
        try:
            self._pool.submit(self._reply, out, frame, seq)
        except RuntimeError:  # pool shut down by stop()
            self._done(frame.conn, seq)
            self._counters.add("lost")

    def wake(self) -> None:
        """After the stop event is set: replies waiting for their turn give up."""
        with self._send_turn:
            self._send_turn.notify_all()

    def shutdown(self) -> None:
        """Wait for the replies being made; those not started are dropped."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _reply(self, out: Any, frame: ReceivedFrame, seq: int) -> None:
        try:
            try:
                messages = self._messages(out, frame)
            except Exception as exc:
                self._once(logging.ERROR, ("reply", type(exc).__name__), "stream: no reply for %r: %s: %s",
                           frame.device, type(exc).__name__, exc)
                messages = []
            with self._send_turn:  # a connection's replies leave in frame order
                while self._order[frame.conn][1] != seq and not self._stop.is_set():
                    self._send_turn.wait(0.1)
            if not messages or not frame.conn.send(messages[0]):
                self._counters.add("lost")
                return
            self._counters.replied(frame.received)
            for message in messages[1:]:
                frame.conn.send(message)
        finally:
            self._done(frame.conn, seq)

    def _done(self, conn: Connection, seq: int) -> None:
        """Reply ``seq`` of ``conn`` sent, dropped or abandoned: the next one's turn, and its room freed."""
        with self._send_turn:
            order = self._order[conn]
            order[1], order[2] = max(order[1], seq + 1), order[2] - 1
            if not order[2] and conn.closed:
                del self._order[conn]
            self._send_turn.notify_all()
        self._room.release()

    def _messages(self, out: Any, frame: ReceivedFrame) -> list[list]:
        depth = out.depth_mm
        replies = [pack_message("IMAGE", self._name(frame.device, "_depth"), frame.timestamp,
                                pack_depth_image(depth, frame.coordinates, frame.geometry))]
        if self.points:
            try:
                replies.append(self._point_reply(depth, frame))
            except (ValueError, OSError) as exc:  # e.g. intrinsics for another aspect ratio
                self._once(logging.ERROR, ("points", str(exc)), "stream: no points for %r: %s", frame.device, exc)
        return replies

    def _grid(self, H: int, W: int) -> tuple[np.ndarray, Any]:
        """(decimation grid bool ``[H, W]``, camera ``Intrinsics``) of ``H x W`` frames: made once per size, kept
        for the :data:`SIZES_KEPT` sizes used last."""
        from .camera import Intrinsics, parse_intrinsics

        def make() -> tuple[np.ndarray, Any]:
            intr = self.intrinsics
            camera = ((intr if intr.size == (W, H) else intr.scaled(W, H)) if isinstance(intr, Intrinsics)
                      else parse_intrinsics(intr, W, H))
            return decimation_grid(H, W, self.point_budget), camera

        with self._grids_lock:  # made under it: once per size, and a new size is rare
            return self._grids.get((H, W), make)

    def _point_reply(self, depth: np.ndarray, frame: ReceivedFrame) -> list:
        from .geometry import backproject, point_mask

        H, W = depth.shape
        grid, camera = self._grid(H, W)
        mask = point_mask(depth, camera, grid)
        points = backproject(depth, camera, mask=mask) if mask.any() else np.zeros((0, 3), np.float32)
        return pack_message("POLYDATA", self._name(frame.device, "_points"), frame.timestamp,
                            pack_point_cloud(points, frame.rgb[mask], depth[mask]))

    def _name(self, device: str, suffix: str) -> str:
        name = reply_name(device, suffix)
        if not name.startswith(device):
            self._once(logging.WARNING, ("name", device, suffix), "stream: %r + %r exceeds OpenIGTLink's %d-byte "
                       "device names: replying as %r", device, suffix, DEVICE_NAME_BYTES, name)
        return name
