"""Live depth over OpenIGTLink: :class:`DepthService` answers each IMAGE ``X`` with an IMAGE ``X_depth``.

Messages (pyigtl's codec; its array axes are ``[k, j, i, components]``):

- in: IMAGE with one slice (k = 1) of uint8 grey (1 component), RGB (3) or RGBA (4, alpha ignored); rows (j) go to
  the model in message order. Other message types are ignored; bad IMAGEs are skipped (also those whose body does
  not match its header's CRC-64, which the OpenIGTLink library drops too, and frames whose sides are further apart
  than :data:`~SurgicalDepthLib.preprocess.MAX_ASPECT_RATIO`: read at their aspect ratio they would hold every
  client's answers for seconds); each case is logged once.
- out: IMAGE ``X_depth``: float32 ``[1, H, W]`` depth in mm along the optical axis, NaN where undefined, with the
  input's timestamp and geometry (IJK→RAS/LPS matrix, coordinate system) copied byte for byte.
- out with ``points=True``: POLYDATA ``X_points``: the valid pixels of a regular grid (:func:`decimation_grid`,
  at most ``point_budget``) back-projected in the camera frame (mm; x right, y down, z forward), one vertex per
  point, point attributes ``Depth`` (scalar, mm) and ``RGB`` (3 components in [0, 1], sent as a vector: the
  OpenIGTLink C library, and so Slicer, reads RGBA attributes with the wrong size).

Latest-frame policy: a frame waits in a one-slot mailbox per source, a device of one connection (two clients that
both call their device "Image", the default of Slicer and pyigtl, do not replace each other's frames)
(:class:`~latest_frame.LatestFrameMailbox`);
one arriving while the model is busy replaces it (the replaced frame is counted as dropped), so latency stays
bounded when frames come faster than inference. Frames go through :func:`~SurgicalDepthLib.stream.depth_stream`
(batch 1), one at a time on CPU.

Field of view (``fov_mask``, :mod:`SurgicalDepthLib.fov`): depth is NaN outside the scope's field of view and points
come only from inside it. ``"auto"`` detects it per source (connection and device) and frame size from the frames
received so far, again with each of the first :data:`~SurgicalDepthLib.fov.FOV_FRAMES` that are not blank (a black
screen before the scope is on does not count; the service never holds frames back to look at more); an array gives
it, None turns it off.

Connections (:mod:`SurgicalDepthLib._igtl`, which also holds the wire format): a malformed message is skipped and
the connection kept; a stream that cannot be re-synchronised (bad header, a body that stops coming) closes that
connection only; a client may come and go; replies go to the connection the frame came from. Replies are made
on a few threads and leave in frame order (:mod:`SurgicalDepthLib._live_replies`); counters and latencies:
:mod:`SurgicalDepthLib._live_stats`.
"""
from __future__ import annotations

import importlib.util
import logging
import socket
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from ._igtl import BadMessage, Connection, PointCloudMessage, StreamBroken, body_intact, decode_image
from ._live_replies import LIVE_POINT_BUDGET, ReceivedFrame, ReplySender, decimation_grid
from ._live_stats import DepthServiceStats, ServiceCounters
from .camera import Intrinsics, parse_intrinsics
from .fov import FovSearch, is_blank
from .latest_frame import LatestFrameMailbox
from .recent import RecentlyUsed
from .stream import black_frame, depth_stream

__all__ = ["DEFAULT_PORT", "LIVE_POINT_BUDGET", "DepthService", "DepthServiceStats", "PointCloudMessage",
           "decimation_grid"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 18944  # the registered OpenIGTLink port
_FOV_DEVICES = 64  # "auto" field-of-view masks kept (device, frame size): bounded, device names come from clients
_WAITING_SOURCES = 64  # frames waiting for the model, one per source: bounded, a client may send many device names
MAX_CLIENTS = 16  # default cap on connected clients (each holds a thread and its buffers; Slicer needs one)


class DepthService:
    """The OpenIGTLink depth service (see the module docstring): a server on ``host:port`` or, with
    ``connect=(host, port)``, a client of a PLUS/OpenIGTLink server that answers over the same connection and
    reconnects when it is lost. ``start()``/``stop()`` or ``with``; it installs no signal handlers.

    Args:
        model: a :class:`DepthModel` (or an object with its inference API, see :func:`depth_stream`).
        host, port: where to listen (``port=0``: any free port, see :attr:`address`).
        connect: ``(host, port)`` of a server to take frames from instead of listening.
        points: also send POLYDATA ``X_points`` with at most ``point_budget`` points per frame.
        intrinsics: ``"fx,fy,cx,cy"`` or a calibration file (:func:`~SurgicalDepthLib.camera.parse_intrinsics`),
            an :class:`Intrinsics`, or None (a 70° pinhole for each frame size, warned once per size). Given, the
            depth of a model with a reference lens is corrected to it (:mod:`~SurgicalDepthLib.lens`).
        depth_range, input_size: as in :func:`depth_stream` (mm; network input lower bound).
        fov_mask: the scope's field of view: ``"auto"`` (detected per source and frame size from its first
            frames, :func:`~SurgicalDepthLib.fov.detect_fov_mask`), a bool ``[H, W]`` array (True = tissue; frames
            of another size get no reply) or None (every pixel is tissue). Depth is NaN outside it.
        output_threads: threads turning predictions into replies (default 3 on CPU, 4 on a GPU).
        status_interval: seconds between status reports (None: none); ``on_status(DepthServiceStats)`` receives them
            (default: logged at INFO).
        io_timeout: seconds a message that has started arriving, or a reply going out, may stall before the
            connection is closed (on the whole, either must also keep up ``_igtl.MIN_BODY_RATE``).
        max_clients: clients served at once (server): a connection beyond them is closed as it arrives, counted as
            ``refused`` and logged once, so a client that reconnects in a loop cannot exhaust threads and memory.
    """

    def __init__(self, model: Any, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 connect: tuple[str, int] | None = None, points: bool = False,
                 point_budget: int = LIVE_POINT_BUDGET, intrinsics: Any = None,
                 depth_range: tuple[float, float] | None = None, input_size: int | None = None,
                 fov_mask: str | np.ndarray | None = "auto", output_threads: int | None = None,
                 status_interval: float | None = 5.0, on_status: Callable[[DepthServiceStats], None] | None = None,
                 io_timeout: float = 5.0, retry_interval: float = 1.0, max_clients: int = MAX_CLIENTS):
        if point_budget < 1:
            raise ValueError(f"point_budget must be >= 1, got {point_budget}")
        if status_interval is not None and not status_interval > 0:
            raise ValueError(f"status_interval must be > 0 seconds or None, got {status_interval}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        if output_threads is not None and output_threads < 1:
            raise ValueError(f"output_threads must be >= 1, got {output_threads}")
        if isinstance(fov_mask, str) and fov_mask != "auto":
            raise ValueError(f"fov_mask must be 'auto', None or a bool [H, W] array, got {fov_mask!r}")
        if fov_mask is not None and not isinstance(fov_mask, str) and np.ndim(fov_mask) not in (2, 3):
            raise ValueError(f"fov_mask must be 'auto', None or a bool [H, W] array, got an array of shape "
                             f"{np.shape(fov_mask)}")
        self.model, self.host, self.port, self.connect = model, host, int(port), connect
        self.points, self.point_budget, self.intrinsics = points, int(point_budget), intrinsics
        self.depth_range, self.input_size, self.fov_mask = depth_range, input_size, fov_mask
        self.status_interval, self.on_status = status_interval, on_status
        self.io_timeout, self.retry_interval, self.max_clients = io_timeout, retry_interval, int(max_clients)
        on_cpu = getattr(getattr(model, "device", None), "type", "cpu") == "cpu"
        # a GPU stream hands a result out once the next frame is queued (upload overlapped), so two in flight
        self._in_flight = 1 if on_cpu else 2
        # a connection uses all but one (ReplySender): 3 let one client's replies overlap on a CPU
        self._output_threads = output_threads or (3 if on_cpu else 4)
        self.address: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._mailbox: LatestFrameMailbox[ReceivedFrame] = LatestFrameMailbox(_WAITING_SOURCES)  # keyed by source
        self._counters = ServiceCounters()
        self._lock = threading.Lock()  # connections, threads, warned keys
        self._connections: set[Connection] = set()
        self._threads: list[threading.Thread] = []
        self._warned: set = set()
        self._fov_masks: RecentlyUsed[tuple, FovSearch] = RecentlyUsed(_FOV_DEVICES)  # "auto": per source, size
        self._listener: socket.socket | None = None
        self._replies: ReplySender | None = None
        self._started: float | None = None

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self) -> "DepthService":
        """Bind (server) or start connecting (client), then serve in background threads. Raises ``OSError``
        when the address cannot be bound."""
        if self._started is not None:
            raise RuntimeError("DepthService.start() called twice")
        if self.connect is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self._listener = socket.create_server((self.host, self.port), family=family)
            self._listener.settimeout(0.2)
            self.address = self._listener.getsockname()[:2]
        else:
            self.address = (self.connect[0], int(self.connect[1]))
        if importlib.util.find_spec("crcmod._crcfunext") is None:
            logger.warning("stream: crcmod runs without its C extension: the CRC of every frame and reply is computed "
                           "in pure Python (slow for large frames); reinstall crcmod with a C compiler available")
        self._started = time.monotonic()
        self._replies = ReplySender(self._output_threads, self._counters, self._stop, self._once, points=self.points,
                                    point_budget=self.point_budget, intrinsics=self.intrinsics)
        if self._listener is not None:
            self._spawn(self._accept_loop, "accept")
            logger.info("stream: listening on %s:%d", *self.address)
        else:
            self._spawn(self._connect_loop, "connect")
        self._spawn(self._infer_loop, "infer")
        if self.status_interval:
            self._spawn(self._status_loop, "status")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and end the threads (frames not answered yet count as lost). Idempotent."""
        if self._started is None or self._stop.is_set():
            return
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for conn in connections:
            conn.close()
        self._replies.wake()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._replies.shutdown()
        self._mailbox.clear()
        self._counters.settle_lost()
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            logger.warning("stream: threads still running after stop: %s", ", ".join(alive))

    def __enter__(self) -> "DepthService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self, window: float | None = None) -> DepthServiceStats:
        """Counters, and output frames/s and latency percentiles over the last ``window`` seconds (default: the
        status interval, else 5 s)."""
        window = float(window or self.status_interval or 5.0)
        with self._lock:
            clients = len(self._connections)
        running = time.monotonic() - self._started if self._started is not None else None
        return self._counters.snapshot(window, clients, running)

    def _status_loop(self) -> None:
        while not self._stop.wait(self.status_interval):
            stats = self.stats(self.status_interval)
            if self.on_status is None:
                logger.info("%s", stats.format())
                continue
            try:
                self.on_status(stats)
            except Exception as exc:  # the caller's display must not end the service
                self._once(logging.ERROR, ("on_status", type(exc).__name__), "stream: on_status failed: %s", exc)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _spawn(self, target: Callable, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"DepthService.{name}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _count(self, name: str, n: int = 1) -> None:
        self._counters.add(name, n)

    def _once(self, level: int, key: tuple, msg: str, *args: Any) -> None:
        """Log ``msg`` the first time ``key`` occurs (at DEBUG afterwards): bad input must not flood the log."""
        with self._lock:
            first = key not in self._warned and len(self._warned) < 10_000
            if first:
                self._warned.add(key)
        logger.log(level if first else logging.DEBUG, msg, *args)

    # -- connections -----------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, (host, port, *_) = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                self._once(logging.WARNING, ("accept", exc.errno), "stream: accept failed: %s", exc)
                self._stop.wait(0.2)
                continue
            peer = f"{host}:{port}"
            conn = Connection(sock, peer, self.io_timeout)
            with self._lock:  # registered here, not in the thread: a burst of connections cannot pass the cap
                full = len(self._connections) >= self.max_clients
                if not full:
                    self._connections.add(conn)
            if full:  # counted first: a client that sees its connection closed sees it counted too
                self._count("refused")
                conn.close()
                self._once(logging.WARNING, ("refused",), "stream: %d clients connected (max_clients); closing "
                           "the connection from %s (logged once)", self.max_clients, peer)
                continue
            try:
                self._spawn(self._serve, f"client {peer}", conn)
            except RuntimeError as exc:  # "can't start new thread": the place it took is freed
                with self._lock:
                    self._connections.discard(conn)
                conn.close()
                self._once(logging.ERROR, ("thread", str(exc)), "stream: cannot serve %s: %s", peer, exc)

    def _connect_loop(self) -> None:
        host, port = self.address
        reported = False
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((host, port), timeout=self.io_timeout)
            except OSError as exc:
                if not reported:
                    logger.warning("stream: cannot connect to %s:%d (%s); retrying every %g s", host, port, exc,
                                self.retry_interval)
                reported = True
                self._stop.wait(self.retry_interval)
                continue
            reported = False
            self._serve(Connection(sock, f"{host}:{port}", self.io_timeout))
            self._stop.wait(self.retry_interval)

    def _serve(self, conn: Connection) -> None:
        with self._lock:
            self._connections.add(conn)
        logger.info("stream: %s connected", conn.peer)
        try:
            while not self._stop.is_set():
                try:
                    message = conn.read()
                except StreamBroken as exc:
                    self._count("bad")
                    self._once(logging.WARNING, ("broken", exc.reason),
                               "stream: %s: %s; closing this connection", conn.peer, exc)
                    break
                if message is None:
                    break
                self._dispatch(conn, *message)
        finally:
            conn.close()
            with self._lock:
                self._connections.discard(conn)
            if not self._stop.is_set():
                logger.info("stream: %s disconnected", conn.peer)

    def _dispatch(self, conn: Connection, head: tuple, body: bytearray, received: float) -> None:
        version, mtype, device, stamp, crc = head
        if mtype != "IMAGE":
            self._count("ignored")
            self._once(logging.INFO, ("type", mtype, device), "stream: ignoring %s messages from %r (only IMAGE "
                       "is answered)", mtype, device)
            return
        try:
            rgb, coordinates, geometry = decode_image(version, device, body)
        except BadMessage as exc:
            self._count("bad")
            self._once(logging.WARNING, ("bad", device, exc.reason), "stream: skipping IMAGE %r from %s: %s "
                       "(logged once)", device, conn.peer, exc)
            return
        self._count("frames_in")
        frame = ReceivedFrame(rgb, device, stamp, coordinates, geometry, received, conn, body, crc)
        if self._mailbox.put(frame, key=frame.source):
            self._count("dropped")

    # -- inference -------------------------------------------------------------------------------------------
    def _infer_loop(self) -> None:
        while not self._stop.is_set():
            first = self._take(0.1)
            if first is None:
                continue
            if self._black(first):  # a black screen shows no tissue: no depth, no points, and no model run
                self._replies.submit(black_frame(0, first.rgb, self._fov(first)), first)
            else:
                self._run_stream(first)

    def _black(self, frame: ReceivedFrame) -> bool:
        """Whether ``frame`` gets no depth: a black screen (:func:`~.fov.is_blank`) under ``fov_mask="auto"``."""
        return isinstance(self.fov_mask, str) and is_blank(frame.rgb)

    def _take(self, timeout: float) -> ReceivedFrame | None:
        """The next frame of the mailbox (waiting up to ``timeout`` seconds) whose body matches its CRC-64. Checked
        when a frame's turn comes rather than as it arrives: the frames the latest-frame policy drops cost no CRC
        (about 30 ms for a 1080p RGB frame, on a CPU the model also needs). A corrupted frame is counted bad (not in)
        and logged once, and the next one taken."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._mailbox.take(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return None
            body, frame.body = frame.body, None  # checked once (a frame put back is not checked again)
            if body is None or body_intact(body, frame.crc):
                return frame
            self._counters.move("frames_in", "bad")
            self._once(logging.WARNING, ("bad", frame.device, "crc"), "stream: skipping IMAGE %r from %s: its body "
                       "does not match the CRC-64 of its header (corrupted on the way; logged once)", frame.device,
                       frame.conn.peer)

    def _lens(self, shape: tuple[int, ...]) -> Intrinsics | None:
        """The calibrated camera for frames of ``shape`` (the depth is corrected to it), or None."""
        if self.intrinsics is None or isinstance(self.intrinsics, Intrinsics):
            return self.intrinsics
        try:
            return parse_intrinsics(self.intrinsics, shape[1], shape[0])
        except (OSError, ValueError) as exc:
            self._once(logging.ERROR, ("intrinsics", str(exc)), "stream: intrinsics: %s (depth not corrected to "
                       "the lens)", exc)
            return None

    def _run_stream(self, first: ReceivedFrame) -> None:
        """One :func:`depth_stream` over the latest frames of ``first``'s size and field of view; it ends when
        either changes (``depth_stream`` needs one of each), when a GPU stream must hand out its last result, or at
        stop."""
        pending: deque[ReceivedFrame] = deque()  # yielded to the stream, result not out yet (the stream keeps order)
        room = threading.Condition()
        done = threading.Event()
        shape, fov = first.rgb.shape, self._fov(first)

        def halted() -> bool:
            return done.is_set() or self._stop.is_set()

        def next_frame() -> ReceivedFrame | None:
            while not halted():
                with room:  # take a frame only when the model is ready for it: the latest-frame policy
                    if not room.wait_for(lambda: len(pending) < self._in_flight or halted(), 0.1) or halted():
                        continue
                    busy = bool(pending)
                frame = self._take(0.0 if busy else 0.1)
                if frame is None:
                    if busy:  # nothing new while a GPU result waits: end the stream so that it comes out
                        return None
                    continue
                # one size and mask per stream; a black frame is answered without the model (_infer_loop)
                if frame.rgb.shape != shape or self._fov(frame) is not fov or self._black(frame):
                    if self._mailbox.put_back(frame, key=frame.source):
                        self._count("dropped")
                    return None
                return frame
            return None

        def frames():
            frame: ReceivedFrame | None = first
            while frame is not None:
                with room:
                    pending.append(frame)
                yield frame.rgb
                frame = next_frame()

        # the mask as an array (or None): depth_stream's "auto" would read several frames ahead before the first
        # prediction, which would queue stale frames
        stream = depth_stream(self.model, frames(), depth_range=self.depth_range, batch_size=1,
                              input_size=self.input_size, fov_mask=fov, intrinsics=self._lens(shape))
        try:
            for out in stream:
                with room:
                    frame = pending.popleft()
                    room.notify_all()
                self._replies.submit(out, frame)
        except Exception as exc:  # a frame the model cannot take must not end the service
            self._once(logging.ERROR, ("inference", type(exc).__name__, str(exc)),
                       "stream: inference failed: %s: %s", type(exc).__name__, exc)
        finally:
            done.set()
            with room:
                room.notify_all()
            stream.close()
            self._count("lost", len(pending))

    def _fov(self, frame: ReceivedFrame) -> np.ndarray | None:
        """The field of view of ``frame``'s source (connection and device) and size: ``fov_mask``, or with "auto"
        the one found from that source's first :data:`~.fov.FOV_FRAMES` frames that are not blank
        (:class:`~.fov.FovSearch`), found again with each of them (no frame is held back): a scope that starts on a
        black or half-lit frame is not masked by that frame for good. Kept for the :data:`_FOV_DEVICES`
        sources/sizes seen last."""
        if not isinstance(self.fov_mask, str):
            return self.fov_mask
        key = (*frame.source, *frame.rgb.shape[:2])
        search = self._fov_masks.get(key, FovSearch)
        before = search.mask
        if search.add(frame.rgb) and search.mask is not before:
            logger.info("stream: %r (%dx%d): %s", frame.device, key[3], key[2], "no field-of-view border found"
                        if search.mask is None else f"field of view detected: {100 * search.mask.mean():.1f} % "
                        "of the frame")
        return search.mask
