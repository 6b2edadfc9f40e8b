"""Video files whose container misstates its length, as real recorders write them (for the readers' tests): WebM
with a wrong or no duration, capture-card style MJPEG AVI that is truncated or has damaged frames."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

#: the EBML id and size byte of a WebM Segment Info Duration (an 8-byte float in ms)
_DURATION = b"\x44\x89\x88"


def webm_clip(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> bytes:
    """Write RGB ``frames`` (uint8 ``[H, W, 3]``, one size) as a VP8 WebM at ``path`` (as browsers' and live
    recorders' files) and return its bytes; skips the test where OpenCV cannot write VP8."""
    return _write(path, frames, "VP80", fps, "VP8 WebM")


def with_duration(data: bytes, duration_ms: float | None) -> bytes:
    """The WebM ``data`` with its Segment Info Duration set to ``duration_ms``, or replaced by a Void element of the
    same size (None: a file with no duration, as MediaRecorder writes)."""
    i = data.index(_DURATION)
    element = _DURATION + struct.pack(">d", duration_ms) if duration_ms is not None else b"\xec\x89" + bytes(9)
    return data[:i] + element + data[i + 11:]


def mjpeg_avi(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> bytes:
    """Write RGB ``frames`` (uint8 ``[H, W, 3]``, one size) as a Motion-JPEG AVI at ``path`` (as capture cards and
    frame grabbers record) and return its bytes; skips the test where OpenCV cannot write MJPG."""
    return _write(path, frames, "MJPG", fps, "MJPG AVI")


def cut_in_half(whole: Path, cut: Path) -> Path:
    """``cut``: the first half of the bytes of the video ``whole`` (a recording stopped by a crash, a file still
    being written: its container announces every frame)."""
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return cut


def _write(path: Path, frames: list[np.ndarray], fourcc: str, fps: float, what: str) -> bytes:
    """Write RGB ``frames`` with OpenCV's ``fourcc`` codec and return the file's bytes; skips the test where
    OpenCV cannot write ``what``."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        pytest.skip(f"OpenCV here cannot write {what}")
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path.read_bytes()


def avi_frame_chunks(data: bytes) -> list[tuple[int, int]]:
    """``(offset, size)`` of each frame's payload in an AVI's ``movi`` list, in order (the chunks before ``idx1``)."""
    i, chunks = data.index(b"movi") + 4, []
    while i + 8 <= len(data):
        tag, size = data[i:i + 4], int.from_bytes(data[i + 4:i + 8], "little")
        if tag == b"idx1":
            break
        if tag[2:] in (b"dc", b"db"):
            chunks.append((i + 8, size))
        i += 8 + size + (size & 1)
    return chunks


def with_damaged_frames(data: bytes, frames: range) -> bytes:
    """The AVI ``data`` with the payload of ``frames`` zeroed (a bad sector, a dropped USB transfer): the container
    is intact and every other frame decodes."""
    damaged = bytearray(data)
    chunks = avi_frame_chunks(data)
    for k in frames:
        offset, size = chunks[k]
        damaged[offset:offset + size] = bytes(size)
    return bytes(damaged)
