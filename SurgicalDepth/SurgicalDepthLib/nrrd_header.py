"""Headers of raw float32 NRRD files with attached data (the format 3D Slicer and ITK read): written for depth maps
and sequences (:mod:`SurgicalDepthLib.depth_io`, :mod:`SurgicalDepthLib.depth_sequence`), and read back.

Written here rather than by SimpleITK, whose C++ writer turns a full disk into a multi-line exception: the data
then goes through Python's own file I/O (see :func:`~SurgicalDepthLib.atomic_io.report_disk_full`).
"""
from __future__ import annotations

import os

import numpy as np


def nrrd_header(fields: list[str]) -> bytes:
    """A raw little-endian float32 NRRD header with ``fields`` (``key: value`` lines) and the blank line."""
    lines = ["NRRD0004", "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html", "type: float", *fields]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def nrrd_2d_header(shape: tuple[int, int], spacing: tuple[float, float] | None, unit: str = "") -> bytes:
    """Header of a 2D map ``shape = (H, W)`` with pixel ``spacing`` ``(x, y)`` (None: 1, 1): the fields SimpleITK
    writes (read back by ITK/Slicer), and with ``unit`` (the map's values: ``"disparity"``, ``"mm"``, ...) the
    key/value ``depth unit:=<unit>`` as a sequence's header has it (ITK keeps it in the image's metadata)."""
    h, w = shape
    sx, sy = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    if not (np.isfinite([sx, sy]).all() and sx > 0 and sy > 0):
        raise ValueError(f"spacing must be two positive finite numbers (x, y), got {spacing!r}")
    if not (unit.isascii() and unit.isprintable()):
        raise ValueError(f"unit must be printable ASCII text for a NRRD header, got {unit!r}")
    fields = ["dimension: 2", "space dimension: 2", f"sizes: {w} {h}", f"space directions: ({sx!r},0) (0,{sy!r})",
              "kinds: domain domain", "endian: little", "encoding: raw", "space origin: (0,0)"]
    return nrrd_header(fields + ([f"depth unit:={unit}"] if unit else []))


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
