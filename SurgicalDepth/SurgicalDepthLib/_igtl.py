"""OpenIGTLink wire format for :mod:`SurgicalDepthLib.live` (internal): v1/v2 message headers, CRC64, IMAGE in
(decoded with pyigtl's codec) and IMAGE/POLYDATA out (packed here, as buffers to send without copies), the
POLYDATA reader :class:`PointCloudMessage` for Python clients, and :class:`Connection`, one TCP connection.

Connections are handled here rather than by ``pyigtl.OpenIGTLinkServer``, which (pyigtl 0.3.4) installs SIGINT/
SIGTERM handlers when constructed, busy-loops after a client disconnects and serves no other client until a send
fails, and drops the connection (printing a traceback) on a malformed message. Here a malformed message raises
:class:`BadMessage` (the caller skips it and keeps the connection); a stream that cannot be re-synchronised (bad
header, a body that stops coming) raises :class:`StreamBroken` (the caller closes that connection only). A body is
checked against its header's CRC-64 (:func:`body_intact`) as the OpenIGTLink library checks it before unpacking
(``igtlMessageBase.cxx``, ``UnpackBody``; Slicer's OpenIGTLinkIF checks by default): pyigtl checks none.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pyigtl
from pyigtl.messages import CRC64

from .preprocess import MAX_ASPECT_RATIO

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 << 20  # larger bodies mean a stream out of sync, not a frame (an 8K RGBA frame is 133 MB)
#: a body is read in pieces of this size, so memory follows the bytes that arrived, not the size a header announced
BODY_CHUNK_BYTES = 1 << 20
#: slowest transfer a message may keep up (bytes/s) once it has started: a body that trickles in is dropped
MIN_BODY_RATE = 1 << 20
DEVICE_NAME_BYTES = 20
#: TCP keepalive (seconds idle, seconds between probes, probes): a peer gone without closing (a PLUS host that
#: rebooted, a cable pulled) is noticed within about 25 s instead of never
KEEPALIVE = (10, 5, 3)
_HEADER = struct.Struct(">H12s20s8sQQ")  # version, type, device name, timestamp (sec, frac), body size, CRC64
_IMAGE_START = struct.Struct(">HBBBBHHH")  # version, components, scalar type, endianness, coordinates, size i j k
_GEOMETRY = slice(12, 60)  # 12 float32 after _IMAGE_START: t, s, n columns and the image centre
_FLOAT32, _LITTLE_ENDIAN = 10, 2
_ATTR_SCALAR, _ATTR_VECTOR = 0x00, 0x01


class BadMessage(ValueError):
    """A message that is skipped; ``reason`` keys the once-only log."""

    def __init__(self, reason: str, text: str):
        super().__init__(text)
        self.reason = reason


class StreamBroken(BadMessage):
    """The byte stream of a connection cannot be parsed further (closed mid-message, stalled, not OpenIGTLink)."""


def reply_name(device: str, suffix: str) -> str:
    """``device + suffix`` within OpenIGTLink's 20-byte device names. A device name too long for that is shortened
    and ends in 4 hex digits of its CRC-32, so that two long names that share their start (``LeftEndoscopeCam1``,
    ``LeftEndoscopeCam2``) still get replies of their own."""
    # bytes that are no UTF-8 (kept escaped by Connection.read) and a character cut at the limit are left out
    raw = device.encode("utf-8", "surrogateescape")
    room = DEVICE_NAME_BYTES - len(suffix)
    if len(raw) <= room:
        return raw.decode("utf-8", "ignore") + suffix
    return raw[:room - 4].decode("utf-8", "ignore") + f"{zlib.crc32(raw) & 0xFFFF:04x}" + suffix


def pack_message(message_type: str, device: str, timestamp: bytes, parts: list) -> list:
    """An OpenIGTLink v1 message as buffers to send in order: header (with the 8 raw ``timestamp`` bytes) then
    the body ``parts`` (bytes-like)."""
    crc, size = 0, 0
    for part in parts:
        crc = CRC64(part, crc)
        size += memoryview(part).nbytes
    header = _HEADER.pack(1, message_type.encode("ascii"), device.encode("utf-8")[:DEVICE_NAME_BYTES], timestamp,
                          size, crc)
    return [header, *parts]


def pack_depth_image(depth: np.ndarray, coordinates: int, geometry: bytes) -> list:
    """IMAGE body parts for float32 ``depth [H, W]`` with the input's raw ``geometry`` (48 bytes)."""
    H, W = depth.shape
    data = np.ascontiguousarray(depth, dtype="<f4")
    head = (_IMAGE_START.pack(1, 1, _FLOAT32, _LITTLE_ENDIAN, coordinates, W, H, 1) + geometry
            + struct.pack(">6H", 0, 0, 0, W, H, 1))
    return [head, memoryview(data).cast("B")]


def pack_point_cloud(points: np.ndarray, rgb: np.ndarray, depth: np.ndarray) -> list:
    """POLYDATA body parts: ``points`` float32 ``[N, 3]``, one vertex each, attributes ``Depth`` (``[N]`` mm)
    and ``RGB`` (uint8 ``[N, 3]`` sent as floats in [0, 1])."""
    n = len(points)
    verts = np.empty((n, 2), ">u4")
    verts[:, 0], verts[:, 1] = 1, np.arange(n)
    names = b"Depth\0RGB\0"
    # attribute header as igtl_polydata.c packs it: uint8 type, uint8 components, uint32 count
    head = struct.pack(">10I", n, n, verts.nbytes, 0, 0, 0, 0, 0, 0, 2)
    attrs = struct.pack(">BBI", _ATTR_SCALAR, 1, n) + struct.pack(">BBI", _ATTR_VECTOR, 3, n)
    return [head, points.astype(">f4").tobytes(), verts.tobytes(), attrs + names + b"\0" * (len(names) % 2),
            depth.astype(">f4").tobytes(), (rgb / np.float32(255)).astype(">f4").tobytes()]


class PointCloudMessage(pyigtl.PolyDataMessage):
    """POLYDATA reader for Python clients (pyigtl 0.3.4 registers no POLYDATA reader and its ``_unpack_content``
    does not run): ``points`` float32 ``[N, 3]``, ``vertices`` uint32 (``1, i`` pairs), ``attributes``
    ``{name: float32 [N, components]}``. Register it with
    ``pyigtl.messages.message_type_to_class_constructor["POLYDATA"] = PointCloudMessage``."""

    def _unpack_content(self, content: bytes) -> None:
        counts = struct.unpack_from(">10I", content)
        n, pos = counts[0], 40
        self.points = np.frombuffer(content, ">f4", 3 * n, pos).astype(np.float32).reshape(n, 3)
        pos += 12 * n
        cells = [np.frombuffer(content, ">u4", size // 4, pos + sum(counts[2:2 + 2 * i:2])).astype(np.uint32)
                 for i, size in enumerate(counts[2:10:2])]
        self.vertices, self.lines, self.polygons, self.triangle_strips = cells
        pos += sum(counts[2:10:2])
        kinds = [struct.unpack_from(">BBI", content, pos + 6 * a) for a in range(counts[9])]
        pos += 6 * counts[9]
        names = content[pos:].split(b"\0")[:counts[9]]
        name_bytes = sum(len(name) + 1 for name in names)
        pos += name_bytes + name_bytes % 2  # names are padded to an even length
        self.attributes = {}
        for name, (kind, comps, count) in zip(names, kinds):
            comps = {_ATTR_SCALAR: comps, _ATTR_VECTOR: 3, 0x02: 3, 0x03: 9, 0x04: 4}.get(kind & 0x0F, comps)
            self.attributes[name.decode()] = np.frombuffer(content, ">f4", comps * count, pos).astype(
                np.float32).reshape(count, comps)
            pos += 4 * comps * count


def decode_image(header_version: int, device: str, body: bytearray) -> tuple[np.ndarray, int, bytes]:
    """IMAGE body → (RGB uint8 ``[H, W, 3]``, coordinate-system byte, raw geometry bytes); :class:`BadMessage`
    when the image is not one 2D uint8 grey/RGB/RGBA frame or the body does not parse."""
    msg = pyigtl.ImageMessage()
    # the content alone, as a v1 body: pyigtl would also decode the metadata, which is not needed here
    fields = {"header_version": 1, "message_type": "IMAGE", "device_name": device, "timestamp": 0.0}
    try:
        content = _content(header_version, body)
        msg.unpack(fields, content)
        if len(content) < 60:
            raise ValueError("body shorter than the image header")
    except Exception as exc:  # pyigtl raises struct.error, ValueError, KeyError, NotImplementedError, ...
        raise BadMessage(f"malformed:{type(exc).__name__}", f"malformed IMAGE ({type(exc).__name__}: {exc})") from exc
    image = msg.image if msg.image.ndim == 4 else msg.image[..., None]
    k, h, w, c = image.shape
    if k != 1:
        raise BadMessage("shape", f"IMAGE with {k} slices: expected one 2D frame (k = 1)")
    if c not in (1, 3, 4):
        raise BadMessage("components", f"IMAGE with {c} components: expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    if image.dtype != np.uint8:
        raise BadMessage("dtype", f"IMAGE of {image.dtype}: expected uint8")
    if h < 2 or w < 2:
        raise BadMessage("shape", f"IMAGE of {w}x{h} pixels: expected at least 2x2")
    if max(h, w) > MAX_ASPECT_RATIO * min(h, w):
        raise BadMessage("aspect", f"IMAGE of {w}x{h} pixels: sides further apart than {MAX_ASPECT_RATIO}:1 "
                                   "(the network would read a strip many times its usual size)")
    rgb = np.ascontiguousarray(image[0, :, :, :3] if c > 1 else np.repeat(image[0], 3, axis=2))
    return rgb, content[5], bytes(content[_GEOMETRY])


def body_intact(body: bytes | bytearray | memoryview, crc: int) -> bool:
    """Whether ``body`` (the whole body: a v2 header's extended header and metadata included) has the CRC-64
    (ECMA-182, as :data:`pyigtl.messages.CRC64`) its header announced: a message whose bytes were changed on the way
    is dropped, as the OpenIGTLink library drops it, instead of being predicted on."""
    return CRC64(body) == crc


def _content(header_version: int, body: bytearray) -> memoryview:
    """The message content in ``body``: a v2 header's body holds an extended header before it and metadata after
    it (OpenIGTLink v3; ``igtlMessageBase.cxx`` locates them the same way). The metadata is never decoded: a value
    in an encoding pyigtl does not read (an ISO-8859-1 one, or non-ASCII bytes tagged US-ASCII as PLUS tags every
    value) must not cost the frame, which the OpenIGTLink library, and so Slicer, reads."""
    view = memoryview(body)
    if header_version < 2:
        return view
    size, meta_header, meta = struct.unpack_from(">HHI", body)
    end = len(body) - meta_header - meta
    if size < 12 or end < size:
        raise ValueError(f"extended header of {size} bytes and metadata of {meta_header + meta} bytes in a body of "
                         f"{len(body)} bytes")
    return view[size:end]


def _keep_alive(sock: socket.socket) -> None:
    """TCP keepalive with :data:`KEEPALIVE`'s timing where the platform lets it be set (Linux, macOS, Windows)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle, interval, count = KEEPALIVE
    if hasattr(socket, "SIO_KEEPALIVE_VALS"):  # Windows: on, idle and interval in ms
        sock.ioctl(socket.SIO_KEEPALIVE_VALS, (1, idle * 1000, interval * 1000))
        return
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPALIVE", idle), ("TCP_KEEPINTVL", interval),
                        ("TCP_KEEPCNT", count)):  # TCP_KEEPALIVE: macOS's name for the idle time
        if hasattr(socket, name):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            except OSError:
                pass


class Connection:
    """One TCP connection: whole messages in, buffers out (sends serialised; a failed send closes it)."""

    def __init__(self, sock: socket.socket, peer: str, io_timeout: float):
        self.sock, self.peer, self.io_timeout = sock, peer, io_timeout
        sock.settimeout(io_timeout)
        try:  # options only: macOS refuses them (EINVAL) once the peer has closed, which the first read then finds
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keep_alive(sock)
        except OSError as exc:
            logger.debug("%s: TCP options not set (%s)", peer, exc)
        self.closed = False
        self._send_lock = threading.Lock()

    def _fill(self, buf: memoryview, idle_ok: bool, deadline: float = float("inf")) -> bool:
        got, last = 0, time.monotonic()
        while got < len(buf):
            if time.monotonic() > deadline:
                raise StreamBroken("slow", f"message arriving slower than {MIN_BODY_RATE >> 10} KiB/s")
            try:
                n = self.sock.recv_into(buf[got:])
            except socket.timeout:
                if (got or not idle_ok) and time.monotonic() - last > self.io_timeout:
                    raise StreamBroken("stalled", f"message stalled after {got} of {len(buf)} bytes") from None
                continue
            except OSError:
                n = 0
            if n == 0:
                if (got == 0 and idle_ok) or self.closed:
                    return False
                raise StreamBroken("truncated", f"connection closed after {got} of {len(buf)} bytes of a message")
            got, last = got + n, time.monotonic()
        return True

    def read(self) -> tuple[tuple, bytearray, float] | None:
        """Next message as (header fields ``(version, type, device, raw timestamp, CRC-64)``, body, time complete),
        None when the peer closed between messages. The body's CRC is not checked here (:func:`body_intact`)."""
        raw = bytearray(_HEADER.size)
        if not self._fill(memoryview(raw), idle_ok=True):
            return None
        version, mtype, device, stamp, size, crc = _HEADER.unpack(raw)
        try:  # up to the first NUL, as the OpenIGTLink library reads it (strncpy): bytes after it are no part of it
            mtype = mtype.split(b"\0", 1)[0].rstrip(b" ").decode("ascii")
        except UnicodeDecodeError:
            mtype = ""
        # the standard says ASCII; other bytes are kept (escaped) so the message is still read and answered
        device = device.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if version not in (1, 2) or not mtype.replace("_", "").isalnum() or size > MAX_BODY_BYTES:
            raise StreamBroken("header", f"not an OpenIGTLink header (version {version}, type {mtype!r}, "
                                          f"{size} bytes)")
        body = bytearray()
        deadline = time.monotonic() + self.io_timeout + size / MIN_BODY_RATE
        while len(body) < size:  # grown as the bytes come: an announced size alone allocates nothing
            chunk = bytearray(min(BODY_CHUNK_BYTES, size - len(body)))
            if not self._fill(memoryview(chunk), idle_ok=False, deadline=deadline):
                return None
            body += chunk
        return (version, mtype, device, stamp, crc), body, time.perf_counter()

    def send(self, buffers: list) -> bool:
        """Send one message (its ``buffers`` in order); False, and the connection closed, when it fails. Like a
        message read, it may stall ``io_timeout`` seconds and must keep up :data:`MIN_BODY_RATE` on the whole: a
        client on a slow link (a 4K depth reply is 33 MB) is not cut off after ``io_timeout`` seconds of sending."""
        with self._send_lock:
            if self.closed:
                return False
            views = [memoryview(buf).cast("B") for buf in buffers]
            deadline = time.monotonic() + self.io_timeout + sum(v.nbytes for v in views) / MIN_BODY_RATE
            try:
                for view in views:
                    self._send_view(view, deadline)
                return True
            except OSError as exc:  # a partial message cannot be continued: the connection is done
                logger.info("%s: send failed (%s); closing the connection", self.peer, exc)
                self.close()
                return False

    def _send_view(self, view: memoryview, deadline: float) -> None:
        """``sendall`` in pieces: the socket's timeout applies to each piece (a stall), ``deadline`` to the whole
        (``sendall``'s timeout would bound the whole message by ``io_timeout``, however fast it goes)."""
        while view.nbytes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reply going out slower than {MIN_BODY_RATE >> 10} KiB/s")
            view = view[self.sock.send(view[:BODY_CHUNK_BYTES]):]

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv
        except OSError:
            pass
        self.sock.close()
