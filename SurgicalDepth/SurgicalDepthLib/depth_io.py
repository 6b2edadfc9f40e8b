"""Depth map files: ``save_depth`` / ``load_depth`` by suffix, and streamed 2D+t NRRD sequences for 3D Slicer.

Formats (``depth``: float32 ``[H, W]``, in the map's own unit — mm for metric models, disparity for relative ones):

- ``.npy``: float32, exact.
- ``.tif``/``.tiff``: float32 (OpenCV), exact.
- ``.nrrd``: float32 2D image (SimpleITK), exact; optional pixel ``spacing``.
- ``.png``: uint16 with a documented scale. **Rule:** ``value = round(depth / scale)``, ``depth = value * scale``;
  value 0 means invalid (NaN, ±inf and non-positive depths are written as 0). The default scale is
  ``max(valid depth) / 65535`` so the largest value uses the full range (relative error ≤ 0.5 / value). The scale
  and unit are stored in the PNG itself, in a ``tEXt`` chunk with keyword ``SurgicalDepth`` and JSON text
  ``{"scale": <float>, "unit": <str>}``, which :func:`load_depth` reads back.

Sequences (``.seq.nrrd``) follow 3D Slicer's volume-sequence convention (Slicer ``Docs/developer_guide/modules/
sequences.md`` and ``vtkMRMLVolumeSequenceStorageNode``): 4 axes ``I J K list`` with ``kinds: domain domain domain
list``, ``space directions: ... none``, K = 1 slice, and the custom fields ``axis 3 index type:=numeric`` /
``axis 3 index values:=...`` / ``DataNodeClassName:=vtkMRMLScalarVolumeNode``. The time axis is the last (slowest)
axis, so frames are appended to the raw data one after another: memory does not depend on the clip length.

Every file is written atomically (temporary name, then rename) with Python's own file I/O, so a full disk is an
``OSError`` with its errno: :class:`DiskFullError` ("disk full while writing <file>"), never a library's
byte count or a traceback from a C++ writer, and no temporary file is left behind.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from .atomic_io import atomic_path

logger = logging.getLogger(__name__)

DEPTH_SUFFIXES = (".npy", ".png", ".nrrd", ".tif", ".tiff")
PNG_TEXT_KEY = "SurgicalDepth"
UINT16_MAX = 65535
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _float32_depth_map(depth: np.ndarray, name: str = "depth") -> np.ndarray:
    """float32 ``[H, W]`` copy (or view) of a real-valued 2D numpy array ``depth``; TypeError/ValueError otherwise."""
    if not isinstance(depth, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(depth).__name__}")
    if depth.ndim != 2:
        raise ValueError(f"{name} must be a 2D map [H, W], got shape {depth.shape}")
    if not (np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)):
        raise TypeError(f"{name} must be a real-valued array, got dtype {depth.dtype}")
    return depth.astype(np.float32, copy=False)


def _depth_format(path: Path) -> str:
    """The lower-case suffix of ``path`` that selects the depth file format (one of ``DEPTH_SUFFIXES``)."""
    suffix = path.suffix.lower()
    if suffix not in DEPTH_SUFFIXES:
        raise ValueError(f"cannot tell the depth format of {path}: suffix {suffix!r} is not one of {DEPTH_SUFFIXES}")
    return suffix


#: errno values meaning "no room for this file": a full disk, an exhausted quota, a file size limit (RLIMIT_FSIZE,
#: or the file system's largest file)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """No room to write a file (disk full, quota or file size limit); the message names the file."""


@contextlib.contextmanager
def report_disk_full(path: str | os.PathLike):
    """Re-raise a no-space ``OSError`` (disk full, quota, file size limit) inside the block as
    :class:`DiskFullError` "disk full while writing <path> (<reason>)"; other errors pass unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        error = DiskFullError(f"disk full while writing {path} ({os.strerror(exc.errno)})")
        error.errno = exc.errno
        raise error from None


def _write_atomic(path: Path, *chunks: bytes | memoryview) -> None:
    """Write ``chunks`` to ``path`` atomically; a full disk raises :class:`DiskFullError`."""
    # unbuffered: a failed write raises at once, with no buffered remainder for close() to flush again (a
    # BufferedWriter left holding data after EFBIG crashed Python 3.12.1 when it was collected)
    with report_disk_full(path), atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as f:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view:
                view = view[f.write(view):]


def _nrrd_header(fields: list[str]) -> bytes:
    """A raw little-endian float32 NRRD header with ``fields`` (``key: value`` lines) and the blank line."""
    lines = ["NRRD0004", "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html", "type: float", *fields]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def _nrrd_2d_header(shape: tuple[int, int], spacing: tuple[float, float] | None) -> bytes:
    """Header of a 2D map: the fields SimpleITK writes (read back by ITK/Slicer)."""
    h, w = shape
    sx, sy = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    if not (np.isfinite([sx, sy]).all() and sx > 0 and sy > 0):
        raise ValueError(f"spacing must be two positive finite numbers (x, y), got {spacing!r}")
    return _nrrd_header(["dimension: 2", "space dimension: 2", f"sizes: {w} {h}",
                         f"space directions: ({sx!r},0) (0,{sy!r})", "kinds: domain domain", "endian: little",
                         "encoding: raw", "space origin: (0,0)"])


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
    values[valid] = np.round(depth[valid].astype(np.float64) / scale)
    if values.max(initial=0) > UINT16_MAX:
        raise ValueError(f"depth up to {float(depth[valid].max()):g} does not fit uint16 PNG with scale={scale:g} "
                         f"(max {UINT16_MAX * scale:g}); pass a larger scale or scale=None")
    ok, buf = cv2.imencode(".png", values.astype(np.uint16))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {depth.shape} uint16 PNG")
    return _png_with_text(buf.tobytes(), PNG_TEXT_KEY, json.dumps({"scale": float(scale), "unit": unit}))


# -- save / load -------------------------------------------------------------------------------------------------
def save_depth(path: str | os.PathLike, depth: np.ndarray, *, scale: float | None = None, unit: str = "",
               spacing: tuple[float, float] | None = None) -> Path:
    """Write one depth (or disparity) map; the format follows the suffix (see the module docstring).

    Args:
        path: ``.npy``, ``.png``, ``.nrrd``, ``.tif`` or ``.tiff``. Written atomically.
        depth: ``[H, W]`` real array (stored as float32; uint16 for PNG).
        scale: PNG only: depth units per PNG count (default ``max / 65535``).
        unit: free text stored in PNG (``"mm"``, ``"disparity"``, ...).
        spacing: NRRD only: pixel size ``(x, y)``.
    Returns:
        ``path`` as a ``Path``.
    Raises:
        DiskFullError: no room for the file (an ``OSError`` naming it); nothing is left under ``path``.
    """
    path = Path(path)
    suffix = _depth_format(path)
    depth = _float32_depth_map(depth)
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
        _write_atomic(path, _nrrd_2d_header(depth.shape, spacing), np.ascontiguousarray(depth, dtype="<f4").data)
    else:
        ok, buf = cv2.imencode(suffix, np.ascontiguousarray(depth))
        if not ok:
            raise ValueError(f"OpenCV could not encode a float32 TIFF for {path}")
        _write_atomic(path, buf.tobytes())
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


# -- NRRD sequences ----------------------------------------------------------------------------------------------
class DepthSequenceWriter:
    """Append ``[H, W]`` maps one at a time to a Slicer volume-sequence NRRD (``*.seq.nrrd``).

    Frames go to a temporary raw file beside ``path``; :meth:`close` writes the header (which needs the frame
    count) and copies the raw data after it in chunks, then renames atomically. On an exception inside the
    ``with`` block nothing is left under ``path``; a full disk raises :class:`DiskFullError` naming ``path``
    (from :meth:`append` or :meth:`close`) and removes the temporary data.

    Args:
        path: output file, conventionally ``<name>.seq.nrrd``.
        spacing: pixel size ``(x, y)`` (default 1, 1).
        fps: if given, index values are times in seconds (``label "time"``), else frame numbers.
        unit: stored as the custom field ``depth unit``.
    """

    def __init__(self, path: str | os.PathLike, *, spacing: tuple[float, float] = (1.0, 1.0),
                 fps: float | None = None, unit: str = ""):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        if len(spacing) != 2 or min(spacing) <= 0:
            raise ValueError(f"spacing must be two positive numbers (x, y), got {spacing!r}")
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive or None, got {fps!r}")
        self.spacing = (float(spacing[0]), float(spacing[1]))
        self.fps = fps
        self.unit = unit
        self.shape: tuple[int, int] | None = None
        self.index_values: list[float] = []
        with report_disk_full(self.path):
            fd, raw = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".raw", dir=self.path.parent)
        self._raw_path = Path(raw)
        self._raw = os.fdopen(fd, "wb")
        self._aborted = False

    def append(self, depth: np.ndarray, index_value: float | None = None) -> None:
        """Append one frame ``[H, W]``; ``index_value`` defaults to the frame number (or its time with ``fps``)."""
        depth = _float32_depth_map(depth)
        if self.shape is None:
            self.shape = depth.shape
        elif depth.shape != self.shape:
            raise ValueError(f"frame {len(self.index_values)} has shape {depth.shape}, expected {self.shape} "
                             "like the first frame")
        if index_value is None:
            n = len(self.index_values)
            index_value = n / self.fps if self.fps else float(n)
        try:
            with report_disk_full(self.path):
                self._raw.write(np.ascontiguousarray(depth, dtype="<f4").data)
        except DiskFullError:
            self.abort()  # the partial raw data is useless: free the space at once
            raise
        self.index_values.append(float(index_value))

    def _header(self) -> bytes:
        h, w = self.shape  # type: ignore[misc]
        sx, sy = self.spacing
        fields = [
            "dimension: 4", "space: left-posterior-superior", f"sizes: {w} {h} 1 {len(self.index_values)}",
            f"space directions: ({sx!r},0,0) (0,{sy!r},0) (0,0,1) none", "kinds: domain domain domain list",
            f'labels: "" "" "" "{"time" if self.fps else "frame"}"', "endian: little", "encoding: raw",
            "space origin: (0,0,0)", "DataNodeClassName:=vtkMRMLScalarVolumeNode", "axis 3 index type:=numeric",
            "axis 3 index values:=" + " ".join(f"{v:.6g}" for v in self.index_values),
        ]
        if self.unit:
            fields.append(f"depth unit:={self.unit}")
        return _nrrd_header(fields)

    def close(self) -> Path:
        """Finish the file (error if no frame was appended, or after :meth:`abort`)."""
        if self._aborted:
            raise ValueError(f"{self.path} was aborted; nothing was written")
        if self._raw.closed:
            return self.path
        try:
            with report_disk_full(self.path):
                self._raw.close()  # flushes the last frames
            if not self.index_values:
                raise ValueError(f"no frames were written to {self.path}")
            with report_disk_full(self.path), atomic_path(self.path) as tmp, open(tmp, "wb") as out, \
                    open(self._raw_path, "rb") as raw:
                out.write(self._header())
                shutil.copyfileobj(raw, out, 16 << 20)
        finally:
            self._raw_path.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        self._aborted = True
        if not self._raw.closed:
            with contextlib.suppress(OSError):  # a full disk fails the final flush too: the data is discarded
                self._raw.close()
        self._raw_path.unlink(missing_ok=True)

    def __enter__(self) -> "DepthSequenceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_depth_sequence_nrrd(path: str | os.PathLike, depths: np.ndarray | Iterable[np.ndarray], *,
                             spacing: tuple[float, float] = (1.0, 1.0), fps: float | None = None,
                             index_values: Sequence[float] | None = None, unit: str = "") -> Path:
    """Write ``depths`` (``[N, H, W]`` array or an iterable of ``[H, W]`` maps, consumed lazily) as a Slicer
    volume-sequence NRRD; see :class:`DepthSequenceWriter`."""
    if isinstance(depths, np.ndarray) and depths.ndim != 3:
        raise ValueError(f"depths must be [N, H, W], got shape {depths.shape}")
    with DepthSequenceWriter(path, spacing=spacing, fps=fps, unit=unit) as writer:
        for i, depth in enumerate(depths):
            writer.append(depth, None if index_values is None else index_values[i])
    return Path(path)


def read_nrrd_header(path: str | os.PathLike) -> tuple[dict[str, str], int]:
    """Fields of an attached-data NRRD header (``key: value`` and ``key:=value``) and the data offset in bytes."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    if not head.startswith(b"NRRD"):
        raise ValueError(f"{path} is not a NRRD file (magic {head[:8]!r})")
    end = head.find(b"\n\n")
    if end < 0:
        raise ValueError(f"{path}: NRRD header longer than 1 MiB or without its terminating blank line")
    fields: dict[str, str] = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#"):
            continue
        key, sep, value = line.partition(":=")
        if not sep:
            key, _, value = line.partition(": ")
        fields[key.strip()] = value.strip()
    return fields, end + 2


def load_depth_sequence_nrrd(path: str | os.PathLike, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read a sequence written by :func:`save_depth_sequence_nrrd`.

    Returns:
        ``(depths, index_values)``: float32 ``[N, H, W]`` (memory-mapped when ``mmap``) and float64 ``[N]``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sequence file {path} does not exist")
    fields, offset = read_nrrd_header(path)
    expected = {"type": "float", "encoding": "raw", "dimension": "4", "kinds": "domain domain domain list"}
    for key, value in expected.items():
        if fields.get(key) != value:
            raise ValueError(f"{path}: NRRD field {key!r} is {fields.get(key)!r}, expected {value!r}")
    w, h, k, n = (int(v) for v in fields["sizes"].split())
    dtype = np.dtype("<f4" if fields.get("endian", "little") == "little" else ">f4")
    if mmap:
        data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(n, k * h, w))
    else:
        data = np.fromfile(path, dtype=dtype, offset=offset, count=n * k * h * w).reshape(n, k * h, w)
    values = np.array([float(v) for v in fields.get("axis 3 index values", "").split()], dtype=np.float64)
    return data, values
