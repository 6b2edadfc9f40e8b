"""Depth map sequences (2D+t) as NRRD files for 3D Slicer, written one frame at a time and read memory-mapped.

The files (``.seq.nrrd``) follow 3D Slicer's volume-sequence convention (Slicer ``Docs/developer_guide/modules/
sequences.md`` and ``vtkMRMLVolumeSequenceStorageNode``): 4 axes ``I J K list`` with ``kinds: domain domain domain
list``, ``space directions: ... none``, K = 1 slice, and the custom fields ``axis 3 index type:=numeric`` /
``axis 3 index values:=...`` / ``DataNodeClassName:=vtkMRMLScalarVolumeNode``. The time axis is the last (slowest)
axis, so frames are appended to the raw data one after another: memory does not depend on the clip length.

Files are written atomically with Python's own file I/O; a full disk is a
:class:`~SurgicalDepthLib.atomic_io.DiskFullError` naming the file, and no temporary data is left behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .atomic_io import DiskFullError, atomic_path, report_disk_full
from .depth_kind import as_depth_map
from .nrrd_header import nrrd_header, read_nrrd_header

__all__ = ["DepthSequenceWriter", "load_depth_sequence_nrrd", "save_depth_sequence_nrrd"]


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
        # `not v > 0` and isfinite: NaN passed `v <= 0` and was written as the header's spacing or times ("nan")
        if len(spacing) != 2 or not all(v > 0 and np.isfinite(v) for v in spacing):
            raise ValueError(f"spacing must be two positive numbers (x, y), got {spacing!r}")
        if fps is not None and not (fps > 0 and np.isfinite(fps)):
            raise ValueError(f"fps must be a positive number or None, got {fps!r}")
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
        depth = as_depth_map(depth)
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
            "axis 3 index values:=" + " ".join(_index_value_text(v) for v in self.index_values),
        ]
        if self.unit:
            fields.append(f"depth unit:={self.unit}")
        return nrrd_header(fields)

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


def _index_value_text(value: float) -> str:
    """An index value (a frame number, or a time in s) as header text that reads back as the same float: a whole
    number as an integer (``12``), else Python's shortest round-trip form (``10000.033333333333``; six significant
    digits made the frames of a long clip share times, 10000.0333 s and 10000.0 s both ``10000``)."""
    if value.is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(value)


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
