"""Memory that a Slicer run's outputs will hold, the memory the computer has free, and point-cloud decimation.

The Surgical Depth module keeps every processed frame's outputs in MRML sequences. Before decoding anything it
estimates their size (:func:`estimate_output_bytes`) and refuses runs above a budget (:func:`check_memory_budget`;
default: half of the available RAM, :func:`available_memory_bytes`) with a message that names the estimate, the
free memory and what to change. Point clouds are thinned to a point budget on a regular pixel grid
(:func:`decimate_mask`), so a 1080p frame holds ~200 k points instead of ~2 M.

Bytes per item (what VTK / MRML store; invalid pixels are not stored, so these are upper bounds):

- RGB frame: 3 per pixel (uint8); depth volume: 4 per pixel (float32, NaN = invalid);
- point cloud: :data:`POINT_BYTES` per point = xyz float32 (12) + "RGB" uint8 (3) + "Depth" float32 (4) + one
  vertex cell (connectivity + offset, one ``vtkIdType`` each: 2 × 8);
- depth mesh: :data:`MESH_VERTEX_BYTES` per pixel (xyz, "RGB", "Depth", float32 "Normals": 12 + 3 + 4 + 12) and
  :data:`TRIANGLE_BYTES` per triangle (3 point ids + 1 offset: 4 × 8), 2 (H − 1)(W − 1) triangles.

The browser's proxy nodes hold one more frame of each output (an RGB frame included).

With fusion (TSDF, :class:`~SurgicalDepthLib.tsdf.TSDFVolume`) the run also holds the volume's block pool (blocks
of 8³ voxels × 20 bytes: five float32 running sums) and, for mesh extraction, a dense grid (20 bytes a voxel:
float32 tsdf, weight, 3 colours). The volume enforces both budgets itself (a full pool stops allocating, a larger
grid is refused), at most :data:`FUSION_BYTES` (2 × 2.5 GiB at its defaults); the Slicer run gives it what the
memory budget leaves after the frames' outputs (:func:`fusion_limits`), and needs at least
:data:`FUSION_MIN_BYTES` of it.
"""
from __future__ import annotations

import logging
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .slicer_helpers import format_bytes

logger = logging.getLogger(__name__)

ID_BYTES = 8  # vtkIdType is 64-bit in Slicer's VTK builds
POINT_BYTES = 12 + 3 + 4 + 2 * ID_BYTES
MESH_VERTEX_BYTES = 12 + 3 + 4 + 12
TRIANGLE_BYTES = 4 * ID_BYTES
#: Default point budget per frame of the Slicer module (0 = full resolution).
DEFAULT_POINT_BUDGET = 200_000
#: Default share of the available memory that one run's outputs may take.
DEFAULT_MEMORY_FRACTION = 0.5
#: TSDF fusion (module docstring): bytes per voxel of the block pool and of the extraction grid, and the voxels of
#: each at ``TSDFVolume``'s defaults (``max_blocks * 8**3`` and ``max_voxels``, both 2^27).
TSDF_VOXEL_BYTES = 20
TSDF_MAX_VOXELS = 1 << 27
FUSION_BYTES = 2 * TSDF_MAX_VOXELS * TSDF_VOXEL_BYTES
#: the least memory a fusion is given (a 256 MiB pool + grid: ~6.7 M voxels each, a 190 mm cube at 1 mm)
FUSION_MIN_BYTES = 256 << 20
TSDF_BLOCK_VOXELS = 8 ** 3


@dataclass(frozen=True)
class FrameBytes:
    """Bytes one frame's outputs take, by kind (0 for outputs that are off)."""

    rgb: int
    depth: int
    points: int
    meshes: int

    @property
    def total(self) -> int:
        return self.rgb + self.depth + self.points + self.meshes


def frame_output_bytes(width: int, height: int, *, rgb_frame: bool = True, points: bool = True,
                       point_budget: int = DEFAULT_POINT_BUDGET, meshes: bool = False) -> FrameBytes:
    """Upper bound of the bytes one ``width × height`` frame's outputs take (see the module docstring).

    ``point_budget``: points kept per frame (0 = every pixel). ``rgb_frame``: False when the RGB frames are an
    existing sequence that the run shares instead of copying.
    """
    width, height, point_budget = int(width), int(height), int(point_budget)
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be >= 1x1 pixels, got {width}x{height}")
    if point_budget < 0:
        raise ValueError(f"point_budget must be >= 0 (0 = full resolution), got {point_budget}")
    pixels = width * height
    n_points = pixels if point_budget == 0 else min(point_budget, pixels)
    n_triangles = 2 * (width - 1) * (height - 1)
    return FrameBytes(rgb=3 * pixels if rgb_frame else 0, depth=4 * pixels,
                      points=POINT_BYTES * n_points if points else 0,
                      meshes=MESH_VERTEX_BYTES * pixels + TRIANGLE_BYTES * n_triangles if meshes else 0)


def estimate_output_bytes(width: int, height: int, n_frames: int, *, rgb_frames: bool = True, points: bool = True,
                          point_budget: int = DEFAULT_POINT_BUDGET, meshes: bool = False, fusion: bool = False) -> int:
    """Bytes that ``n_frames`` frames of ``width × height`` will hold in the scene: every frame's outputs
    (:func:`frame_output_bytes`) plus one more frame of each for the browser's proxy nodes, and with ``fusion`` the
    least a TSDF volume is given (:data:`FUSION_MIN_BYTES`; it gets what the budget leaves, :func:`fusion_limits`)."""
    if int(n_frames) < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    per_frame = frame_output_bytes(width, height, rgb_frame=rgb_frames, points=points, point_budget=point_budget,
                                   meshes=meshes)
    proxies = frame_output_bytes(width, height, rgb_frame=True, points=points, point_budget=point_budget,
                                 meshes=meshes)
    return int(n_frames) * per_frame.total + proxies.total + (FUSION_MIN_BYTES if fusion else 0)


def meminfo_available(text: str) -> int | None:
    """Available bytes from the text of Linux ``/proc/meminfo``: ``MemAvailable`` (kernels >= 3.14), else
    ``MemFree + Buffers + Cached``; None when neither is there."""
    fields = {m.group(1): int(m.group(2)) * 1024 for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}
    if "MemAvailable" in fields:
        return fields["MemAvailable"]
    if "MemFree" in fields:
        return fields["MemFree"] + fields.get("Buffers", 0) + fields.get("Cached", 0)
    return None


def vm_stat_available(text: str) -> int | None:
    """Available bytes from the output of macOS ``vm_stat``: free + inactive + speculative pages."""
    size = re.search(r"page size of (\d+) bytes", text)
    pages = {m.group(1): int(m.group(2)) for m in re.finditer(r'^"?Pages (\w+)"?:\s+(\d+)', text, re.M)}
    if size is None or "free" not in pages:
        return None
    return int(size.group(1)) * sum(pages.get(k, 0) for k in ("free", "inactive", "speculative"))


def _windows_available() -> int | None:
    import ctypes

    class MEMORYSTATUSEX(ctypes.Structure):  # winbase.h
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MEMORYSTATUSEX()
    status.dwLength = ctypes.sizeof(MEMORYSTATUSEX)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        return None
    return int(status.ullAvailPhys)


def _macos_available() -> int | None:
    try:
        import psutil
    except ImportError:
        out = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5, check=True).stdout
        return vm_stat_available(out)
    return int(psutil.virtual_memory().available)


def available_memory_bytes() -> int | None:
    """RAM available to new allocations without swapping, in bytes; None when it cannot be found (logged).

    Linux: ``/proc/meminfo`` ``MemAvailable``; Windows: ``GlobalMemoryStatusEx`` ``ullAvailPhys``; macOS:
    ``psutil`` when importable, else ``vm_stat``.
    """
    try:
        if sys.platform.startswith("linux"):
            found = meminfo_available(Path("/proc/meminfo").read_text())
        elif sys.platform == "win32":
            found = _windows_available()
        elif sys.platform == "darwin":
            found = _macos_available()
        else:
            found = None
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        logger.warning("could not read the available memory (%s)", exc)
        return None
    if found is None:
        logger.warning("the available memory is unknown on this system (%s): the output size is not checked",
                    sys.platform)
    return found


def fusion_limits(fusion_bytes: int) -> tuple[int, int]:
    """``(max_blocks, max_voxels)`` of a ``TSDFVolume`` that holds at most ``fusion_bytes`` (half for the block
    pool, half for the extraction grid; never more than its defaults, :data:`FUSION_BYTES` in all)."""
    half = min(int(fusion_bytes), FUSION_BYTES) // 2 // TSDF_VOXEL_BYTES
    return max(1, half // TSDF_BLOCK_VOXELS), max(TSDF_BLOCK_VOXELS, half)


def check_memory_budget(needed: int, available: int | None, *, budget: int | None = None,
                        fraction: float = DEFAULT_MEMORY_FRACTION) -> int | None:
    """Raise ValueError when ``needed`` bytes exceed the budget: ``budget`` bytes if given, else ``fraction``
    of the ``available`` bytes (nothing is checked, only logged, when both are unknown). Returns the bytes the
    budget leaves (None when it is unknown).

    The message names the estimate, the free memory, the budget and the fix.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if budget is None:
        if available is None:
            logger.warning("outputs need about %s; the free memory is unknown, so the run is not checked",
                        format_bytes(needed))
            return None
        budget = int(fraction * available)
    if needed <= budget:
        return budget - needed
    free = "unknown" if available is None else format_bytes(available)
    raise ValueError(
        f"the outputs of this run would take about {format_bytes(needed)} of memory, more than the budget of "
        f"{format_bytes(budget)} (free memory: {free}); process fewer frames (max. frames, a larger frame stride "
        f"or a start frame), lower the point budget, or turn per-frame depth meshes or fusion off")


def decimation_step(n_pixels: int, budget: int) -> int:
    """Grid step ``s`` (keep every ``s``-th pixel in u and v) that brings ``n_pixels`` near ``budget``:
    ``ceil(sqrt(n_pixels / budget))``; 1 when ``budget`` is 0 (full resolution) or not exceeded."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0 (0 = no limit), got {budget}")
    if budget == 0 or n_pixels <= budget:
        return 1
    return max(1, math.ceil(math.sqrt(n_pixels / budget)))


def decimate_mask(valid: np.ndarray, budget: int) -> np.ndarray:
    """The pixels of bool ``valid [H, W]`` that lie on a regular grid, at most ``budget`` of them.

    The grid keeps pixels ``(v, u)`` with ``v ≡ u ≡ s // 2 (mod s)`` for the smallest step ``s`` >=
    :func:`decimation_step` whose count fits, so the cloud keeps the surface's structure (no random holes) and
    the result is deterministic. ``budget`` 0 keeps every valid pixel. Returns a new bool ``[H, W]`` array.
    """
    valid = np.asarray(valid, dtype=bool)
    if valid.ndim != 2:
        raise ValueError(f"valid must be a bool [H, W] mask, got shape {valid.shape}")
    n = int(np.count_nonzero(valid))
    step = decimation_step(n, int(budget))
    if step == 1:
        return valid.copy()
    while True:  # ends: a step past the image size leaves at most one pixel
        offset = step // 2
        on_grid = valid[offset::step, offset::step]
        if np.count_nonzero(on_grid) <= budget:
            keep = np.zeros_like(valid)
            keep[offset::step, offset::step] = on_grid
            return keep
        step += 1
