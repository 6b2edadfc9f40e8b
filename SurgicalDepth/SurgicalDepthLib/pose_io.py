"""Camera-pose text files: one line per frame, an optional frame index then the 16 numbers of the 4×4
camera-to-world matrix, row-major (a column-major file, such as C3VD's ``pose.txt``, is recognised), spaces or
commas between them; ``#`` starts a comment. Written by ``surgical-depth synth`` (the ``synthetic``
layout's ``poses.txt``) and ``surgical-depth reconstruct``, read by both and by ``--poses``."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .text_files import read_text_file

POSE_FILE_HEADER = "# frame_index m00 m01 m02 m03 m10 ... m33 (4x4 camera-to-world, row-major, mm)"
#: largest deviation of R^T R from identity that a pose file's rotation may have (rounding to 4 decimals gives ~1e-4)
ROUNDING_TOLERANCE = 1e-3


def format_pose_line(index: int, pose: np.ndarray) -> str:
    """One line: the index and the 16 values at full precision (``repr`` round-trips float64 exactly)."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"pose {index} must be 4x4, got shape {pose.shape}")
    return f"{int(index)} " + " ".join(repr(float(x)) for x in pose.ravel())


def format_pose_file(poses: Iterable[np.ndarray], indices: Iterable[int] | None = None) -> str:
    """The whole file's text: header, then one :func:`format_pose_line` per pose (indices default 0, 1, ...)."""
    poses = list(poses)
    indices = range(len(poses)) if indices is None else list(indices)
    return "\n".join([POSE_FILE_HEADER] + [format_pose_line(i, p) for i, p in zip(indices, poses)]) + "\n"


def read_pose_file(path: str | os.PathLike) -> list[tuple[int | None, np.ndarray]]:
    """``[(index or None, float64 [4, 4]), ...]`` in file order. Rigidity is not checked here.

    Raises:
        FileNotFoundError: no such file. ValueError: not UTF-8 text, or a line that is not 16 (or index + 16)
            numbers, naming the file (and line).
    """
    return [(index, matrix) for _, index, matrix in _read_lines(Path(path))]


def _read_lines(path: Path) -> list[tuple[int, int | None, np.ndarray]]:
    """``[(line number, index or None, float64 [4, 4]), ...]`` of the pose lines of ``path`` (see
    :func:`read_pose_file`)."""
    lines = read_text_file(path, "poses file").splitlines()
    poses: list[tuple[int, int | None, np.ndarray]] = []
    for n, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.replace(",", " ").split()
        if len(fields) not in (16, 17):
            raise ValueError(f"{path}:{n}: expected 16 numbers (or an index and 16), got {len(fields)}")
        try:
            matrix = np.asarray([float(v) for v in fields[-16:]], dtype=np.float64).reshape(4, 4)
        except ValueError:
            raise ValueError(f"{path}:{n}: expected numbers, got {text[:60]!r}") from None
        try:
            index = int(fields[0]) if len(fields) == 17 else None
        except ValueError:  # a timestamp, as trajectory formats have, is no frame index
            raise ValueError(f"{path}:{n}: the first of 17 numbers must be an integer frame index, got "
                             f"{fields[0]!r}") from None
        poses.append((n, index, matrix))
    return poses


def read_poses(path: str | os.PathLike, *, require_index: bool = False) -> dict[int, np.ndarray]:
    """``{source frame index: float64 4×4 camera-to-world}`` from a pose file.

    Lines without an index column are numbered 0, 1, ... in file order (an error with ``require_index``); every
    line has the same columns. The 16 numbers are row-major; a file whose matrices are all column-major (C3VD's
    ``pose.txt``, comma-separated, translation last; :func:`_column_major`) is read transposed. A repeated index,
    a file without poses, a matrix whose last row is not ``0 0 0 1`` or whose rotation is not one is a ValueError
    naming the file, line and frame; a rotation off by a text file's rounding (4 decimals and more) is replaced
    by the nearest rotation, so every pose is rigid before any frame is processed.
    """
    entries = _read_lines(Path(path))
    if not entries:
        raise ValueError(f"poses file {path} holds no pose")
    first_line, first_index, _ = entries[0]
    if _column_major(entries):
        entries = [(n, index, matrix.T.copy()) for n, index, matrix in entries]
    poses: dict[int, np.ndarray] = {}
    for position, (n, index, matrix) in enumerate(entries):
        where = f"{path}:{n}"
        if index is None and require_index:
            raise ValueError(f"{where}: every pose line needs a frame index before its 16 numbers")
        if (index is None) != (first_index is None):  # one number missing or extra: the columns are shifted
            raise ValueError(f"{where}: {17 if index is not None else 16} numbers, but line {first_line} has "
                             f"{17 if first_index is not None else 16}: every line needs the same columns (an "
                             f"index and 16, or 16)")
        key = position if index is None else index
        if key in poses:
            raise ValueError(f"{where}: two poses for frame {key}")
        if not np.allclose(matrix[3], [0, 0, 0, 1]):
            raise ValueError(f"{where}: pose of frame {key}: last matrix row must be 0 0 0 1, got "
                             f"{matrix[3].tolist()}")
        poses[key] = _snapped_rotation(matrix, f"{where}: pose of frame {key}")
    return poses


def _column_major(entries: list[tuple[int, int | None, np.ndarray]]) -> bool:
    """Whether the file's matrices are column-major (C3VD's ``pose.txt``: MATLAB order, the translation in the last
    four numbers): some line reads as a homogeneous matrix only when transposed and none only as it is. A line
    with zero translation reads both ways and follows the others."""
    row = [np.allclose(m[3], [0, 0, 0, 1]) for _, _, m in entries]
    col = [np.allclose(m[:, 3], [0, 0, 0, 1]) for _, _, m in entries]
    return any(c and not r for r, c in zip(row, col)) and not any(r and not c for r, c in zip(row, col))


def _snapped_rotation(matrix: np.ndarray, name: str) -> np.ndarray:
    """``matrix`` (4×4) with its rotation replaced by the nearest rotation (SVD; Kabsch), when it is one up to
    the rounding of a text file (``R^T R`` within :data:`ROUNDING_TOLERANCE` of identity, det > 0); ValueError
    naming ``name`` otherwise (a scaling, shear or reflection is no camera pose; nor is NaN or inf)."""
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} has values that are not finite numbers (NaN or inf)")
    rotation = matrix[:3, :3]
    err = float(np.abs(rotation.T @ rotation - np.eye(3)).max())
    if not (err <= ROUNDING_TOLERANCE and np.linalg.det(rotation) > 0):
        raise ValueError(f"{name} is not a rigid transform: R^T R differs from identity by {err:.3g} (rounding "
                         f"allows {ROUNDING_TOLERANCE:g}), det(R) = {np.linalg.det(rotation):.4g}")
    if err <= 1e-9:  # rigid to float precision: kept bit for bit
        return matrix
    u, _, vt = np.linalg.svd(rotation)
    snapped = matrix.copy()
    snapped[:3, :3] = u @ vt
    return snapped
