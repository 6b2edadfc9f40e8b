"""Depth map files: ``save_depth`` / ``load_depth`` by suffix (2D+t sequences for 3D Slicer:
:mod:`SurgicalDepthLib.depth_sequence`, whose names are importable from here too).

Formats (``depth``: float32 ``[H, W]``, in the map's own unit — mm for metric models, disparity for relative ones;
``unit`` names it in every format but ``.npy``):

- ``.npy``: float32, exact. A bare array: it cannot hold the unit (``predict`` names it in ``predictions.json`` for
  a sequence's maps; keep the unit beside single ``.npy`` maps yourself, or choose another format).
- ``.tif``/``.tiff``: float32 (OpenCV), exact; the unit in the ``ImageDescription`` tag as JSON ``{"unit": <str>}``.
- ``.nrrd``: float32 2D image (SimpleITK), exact; optional pixel ``spacing``; the unit as the key/value
  ``depth unit:=<unit>`` (as in a ``.seq.nrrd``; SimpleITK: ``image.GetMetaData("depth unit")``).
- ``.png``: uint16 with a documented scale. **Rule:** ``value = max(1, round(depth / scale))``,
  ``depth = value * scale``; value 0 means invalid (NaN, ±inf and non-positive depths are written as 0; a valid
  depth below half a count is written as 1, so it stays valid). The default scale is
  ``max(valid depth) / 65535`` so the largest value uses the full range (relative error ≤ 0.5 / value). The scale
  and unit are stored in the PNG itself, in a ``tEXt`` chunk with keyword ``SurgicalDepth`` and JSON text
  ``{"scale": <float>, "unit": <str>}``, which :func:`load_depth` reads back.

Every file is written atomically (temporary name, then rename) with Python's own file I/O, so a full disk is an
``OSError`` with its errno: :class:`~SurgicalDepthLib.atomic_io.DiskFullError` ("disk full while writing <file>"),
never a library's byte count or a traceback from a C++ writer, and no temporary file is left behind.
"""
from __future__ import annotations

import io
import json
import logging
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from .atomic_io import DiskFullError, atomic_path, report_disk_full
from .depth_kind import as_depth_map
from .depth_sequence import DepthSequenceWriter, load_depth_sequence_nrrd, save_depth_sequence_nrrd
from .nrrd_header import nrrd_2d_header, read_nrrd_header

# the sequence and disk-full names are re-exported: they were defined here and are imported from here
__all__ = ["DEPTH_SUFFIXES", "DepthSequenceWriter", "DiskFullError", "encode_scaled_png", "load_depth",
           "load_depth_sequence_nrrd", "png_scale_for", "PNG_TEXT_KEY", "read_nrrd_header", "report_disk_full",
           "save_depth", "save_depth_sequence_nrrd", "UINT16_MAX"]

logger = logging.getLogger(__name__)

DEPTH_SUFFIXES = (".npy", ".png", ".nrrd", ".tif", ".tiff")
PNG_TEXT_KEY = "SurgicalDepth"
UINT16_MAX = 65535
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _depth_format(path: Path) -> str:
    """The lower-case suffix of ``path`` that selects the depth file format (one of ``DEPTH_SUFFIXES``)."""
    suffix = path.suffix.lower()
    if suffix not in DEPTH_SUFFIXES:
        raise ValueError(f"cannot tell the depth format of {path}: suffix {suffix!r} is not one of {DEPTH_SUFFIXES}")
    return suffix


def _write_atomic(path: Path, *chunks: bytes | memoryview) -> None:
    """Write ``chunks`` to ``path`` atomically; a full disk raises :class:`DiskFullError`."""
    # unbuffered: a failed write raises at once, with no buffered remainder for close() to flush again (a
    # BufferedWriter left holding data after EFBIG crashed Python 3.12.1 when it was collected)
    with report_disk_full(path), atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as f:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view:
                view = view[f.write(view):]


# -- PNG with a tEXt chunk ---------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_with_text(png: bytes, key: str, text: str) -> bytes:
    """Insert a ``tEXt`` chunk right after ``IHDR`` (PNG spec: 8-byte signature, IHDR chunk of 25 bytes)."""
    ihdr_end = 8 + 4 + 4 + 13 + 4
    return png[:ihdr_end] + _png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1")) + png[ihdr_end:]


def _png_text(data: bytes) -> dict[str, str]:
    """All ``tEXt`` chunks of a PNG file's bytes as ``{keyword: text}``."""
    out: dict[str, str] = {}
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"tEXt":
            key, _, text = data[pos + 8:pos + 8 + length].partition(b"\0")
            out[key.decode("latin-1")] = text.decode("latin-1")
        if kind == b"IDAT" or kind == b"IEND":
            break  # text chunks written by save_depth precede the image data
        pos += 12 + length
    return out


def png_scale_for(depth: np.ndarray) -> float:
    """Default PNG scale: ``max(valid depth) / 65535`` (1.0 when nothing is valid)."""
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return 1.0
    return float(depth[valid].max()) / UINT16_MAX


def _encode_png(depth: np.ndarray, scale: float | None, unit: str) -> bytes:
    if scale is None:
        scale = png_scale_for(depth)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    valid = np.isfinite(depth) & (depth > 0)
    values = np.zeros(depth.shape, dtype=np.float64)
    # at least one count: a valid depth below half a count would otherwise be written as 0, which means invalid
    values[valid] = np.maximum(np.round(depth[valid].astype(np.float64) / scale), 1.0)
    if values.max(initial=0) > UINT16_MAX:
        raise ValueError(f"depth up to {float(depth[valid].max()):g} does not fit uint16 PNG with scale={scale:g} "
                         f"(max {UINT16_MAX * scale:g}); pass a larger scale or scale=None")
    return encode_scaled_png(values.astype(np.uint16), scale, unit)


def encode_scaled_png(values: np.ndarray, scale: float, unit: str) -> bytes:
    """PNG file bytes of uint16 ``values`` [H, W] with the ``tEXt`` chunk that tells :func:`load_depth` the depth
    of one count (``depth = value * scale`` in ``unit``; 0 = invalid)."""
    ok, buf = cv2.imencode(".png", np.asarray(values, np.uint16))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {np.shape(values)} uint16 PNG")
    return _png_with_text(buf.tobytes(), PNG_TEXT_KEY, json.dumps({"scale": float(scale), "unit": unit}))


# -- TIFF with an ImageDescription -------------------------------------------------------------------------------
_TIFF_IMAGE_DESCRIPTION = 270
_TIFF_ASCII = 2


def _tiff_with_description(tiff: bytes, text: str) -> bytes:
    """A classic TIFF's bytes (OpenCV's) with ``text`` (ASCII) as the ``ImageDescription`` of its first image: that
    image's directory (IFD) is copied to the end of the file with the tag added (entries sorted by tag, as TIFF
    requires; the values they point to stay where they are) and the header points to the copy."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or struct.unpack(order + "H", tiff[2:4])[0] != 42:
        raise ValueError(f"not a classic TIFF (header {tiff[:4]!r})")
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
    entries = [tiff[ifd + 2 + 12 * i:ifd + 14 + 12 * i] for i in range(count)]
    entries = [e for e in entries if struct.unpack(order + "H", e[:2])[0] != _TIFF_IMAGE_DESCRIPTION]
    next_ifd = tiff[ifd + 2 + 12 * count:ifd + 6 + 12 * count]
    value = text.encode("ascii") + b"\0"
    head = tiff + b"\0" * (len(tiff) % 2)  # TIFF offsets are even
    if len(value) <= 4:  # fits the entry itself
        field, extra = value.ljust(4, b"\0"), b""
    else:
        field, extra = struct.pack(order + "I", len(head)), value + b"\0" * (len(value) % 2)
    entries.append(struct.pack(order + "HHI", _TIFF_IMAGE_DESCRIPTION, _TIFF_ASCII, len(value)) + field)
    entries.sort(key=lambda e: struct.unpack(order + "H", e[:2])[0])
    new_ifd = len(head) + len(extra)
    body = struct.pack(order + "H", len(entries)) + b"".join(entries) + next_ifd
    return head[:4] + struct.pack(order + "I", new_ifd) + head[8:] + extra + body


def _encode_tiff(depth: np.ndarray, suffix: str, unit: str) -> bytes:
    """float32 TIFF bytes of ``depth`` [H, W] (OpenCV), with ``{"unit": unit}`` as its ImageDescription if any."""
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(depth))
    if not ok:
        raise ValueError(f"OpenCV could not encode a float32 TIFF of shape {depth.shape}")
    return _tiff_with_description(buf.tobytes(), json.dumps({"unit": unit})) if unit else buf.tobytes()


# -- save / load -------------------------------------------------------------------------------------------------
def save_depth(path: str | os.PathLike, depth: np.ndarray, *, scale: float | None = None, unit: str = "",
               spacing: tuple[float, float] | None = None) -> Path:
    """Write one depth (or disparity) map; the format follows the suffix (see the module docstring).

    Args:
        path: ``.npy``, ``.png``, ``.nrrd``, ``.tif`` or ``.tiff``. Written atomically.
        depth: ``[H, W]`` real array (stored as float32; uint16 for PNG).
        scale: PNG only: depth units per PNG count (default ``max / 65535``).
        unit: what the values are (``"mm"``, ``"disparity"``, ...), stored in PNG, TIFF and NRRD files (see the
            module docstring); a ``.npy`` file cannot hold it.
        spacing: NRRD only: pixel size ``(x, y)``.
    Returns:
        ``path`` as a ``Path``.
    Raises:
        DiskFullError: no room for the file (an ``OSError`` naming it); nothing is left under ``path``.
    """
    path = Path(path)
    suffix = _depth_format(path)
    depth = as_depth_map(depth)
    if scale is not None and suffix != ".png":
        raise ValueError(f"scale applies to .png only, got scale={scale!r} for {path}")
    if suffix == ".png":
        _write_atomic(path, _encode_png(depth, scale, unit))
    elif suffix == ".npy":
        # serialised in memory, written by Python: numpy's own writer reports a full disk only as
        # "N requested and M written", without an errno
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(depth))
        _write_atomic(path, buf.getbuffer())
    elif suffix == ".nrrd":
        # written here rather than by SimpleITK, whose C++ writer turns a full disk into a multi-line exception
        _write_atomic(path, nrrd_2d_header(depth.shape, spacing, unit),
                      np.ascontiguousarray(depth, dtype="<f4").data)
    else:
        try:
            data = _encode_tiff(depth, suffix, unit)
        except ValueError as exc:
            raise ValueError(f"cannot write {path}: {exc}") from None
        _write_atomic(path, data)
    return path


def load_depth(path: str | os.PathLike, *, scale: float | None = None) -> np.ndarray:
    """Read a map written by :func:`save_depth` (or a compatible file) as float32 ``[H, W]``.

    Args:
        scale: PNG only: override / supply the scale (needed for 16-bit PNGs from other tools, which have no
            ``SurgicalDepth`` text chunk). PNG value 0 reads as 0 (invalid).
    """
    path = Path(path)
    suffix = _depth_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"depth file {path} does not exist")
    if suffix == ".npy":
        depth = np.load(path, allow_pickle=False)
    elif suffix == ".nrrd":
        import SimpleITK as sitk

        depth = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        if depth.ndim == 3 and depth.shape[0] == 1:
            depth = depth[0]
    elif suffix == ".png":
        data = path.read_bytes()
        if not data.startswith(_PNG_SIGNATURE):
            raise ValueError(f"{path} is not a PNG file")
        values = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if values is None or values.ndim != 2:
            raise ValueError(f"{path}: expected a single-channel PNG, got "
                             f"{'undecodable data' if values is None else f'shape {values.shape}'}")
        if scale is None:
            meta = _png_text(data).get(PNG_TEXT_KEY)
            if meta is None:
                raise ValueError(f"{path} has no '{PNG_TEXT_KEY}' text chunk giving its depth scale; "
                                 "pass scale= (depth units per PNG count)")
            scale = float(json.loads(meta)["scale"])
        depth = values.astype(np.float64) * scale
    else:
        depth = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if depth is None:
            raise ValueError(f"cannot decode TIFF {path}")
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"{path} holds an array of shape {depth.shape}, expected a 2D depth map [H, W]")
    return depth.astype(np.float32, copy=False)
