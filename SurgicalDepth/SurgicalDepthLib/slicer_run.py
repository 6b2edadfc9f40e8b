"""One Slicer run without MRML: the weights it needs, the per-frame loop that feeds the scene and how the outputs
are shown.

The Surgical Depth module builds a :class:`~SurgicalDepthLib.slicer_source.FrameSource` (a video, or the frames of
a sequence browser or a volume: :mod:`SurgicalDepthLib.slicer_source`) from its parameter node's choices
(:mod:`SurgicalDepthLib.slicer_parameters`), then :func:`run_frames` streams it through ``sd.depth_stream`` (the one
inference loop) and hands each frame at once to the module's ``write`` callback, which stores it in MRML sequences:
nothing is kept per frame here. With fusion, each frame also goes through ICP
(:class:`~SurgicalDepthLib.icp.PoseTracker`) and TSDF integration, so cancelling stops those too. Point clouds and
meshes per frame come from :func:`frame_outputs` (RAS, decimated to a point budget, NaN depth left out). The names
of those two modules are importable from here too, where the module and its tests import them.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np

from .alignment import DEFAULT_DEPTH_RANGE_MM
from .memory_budget import DEFAULT_POINT_BUDGET, decimate_mask
from .slicer_helpers import Cancelled, polydata_to_ras, pose_to_ras
from .slicer_parameters import FOV_CHOICES, INPUT_MODES, input_ready, live_arguments, process_arguments
from .slicer_source import FrameSource, array_source, check_rgb_sequence, select_frames, video_source

__all__ = [  # the last two lines: re-exported from slicer_parameters and slicer_source
    "OUTPUT_LABELS", "OUTPUT_NODE_CLASSES", "Cancelled", "DisplayRange", "RunResult", "check_memory",
    "dialog_progress", "display_settings", "ensure_weights", "frame_outputs", "output_kinds", "resolve_fov",
    "run_frames", "unique_run_name",
    "FOV_CHOICES", "INPUT_MODES", "input_ready", "live_arguments", "process_arguments",
    "FrameSource", "array_source", "check_rgb_sequence", "select_frames", "video_source"]

logger = logging.getLogger(__name__)


class DisplayRange:
    """Window/level and colour range of depth maps seen one at a time: the lowest ``low`` and highest ``high``
    percentile of any frame's valid (finite, > 0) depth, from every 4th pixel in u and v (memory stays flat)."""

    def __init__(self, low: float = 2.0, high: float = 98.0):
        self.low, self.high = low, high
        self.lo, self.hi = math.inf, -math.inf

    def update(self, depth: np.ndarray) -> None:
        values = np.asarray(depth, dtype=np.float32)[::4, ::4]
        values = values[np.isfinite(values) & (values > 0)]
        if values.size:
            lo, hi = np.percentile(values, [self.low, self.high])
            self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))

    def range(self, default: tuple[float, float] | None = None) -> tuple[float, float]:
        """``(lo, hi)`` with ``hi > lo``; when no frame had a valid depth ``default``, or without one a
        ValueError."""
        if not math.isfinite(self.lo):
            if default is not None:
                return default
            raise ValueError("no frame has a valid (finite, positive) depth")
        return self.lo, max(self.hi, self.lo + max(abs(self.lo) * 1e-3, 1e-6))


def unique_run_name(stem: str, existing: Iterable[str]) -> str:
    """``stem``, or ``"stem 2"``, ``"stem 3"``, ... : the first name that no ``existing`` name equals or starts
    with followed by a space, so every node of the run (``"<name> depth"``, ...) gets a unique name."""
    taken = set(existing)

    def free(name: str) -> bool:
        return not any(n == name or n.startswith(name + " ") for n in taken)

    if free(stem):
        return stem
    k = 2
    while not free(f"{stem} {k}"):
        k += 1
    return f"{stem} {k}"


def check_memory(source: FrameSource, kinds: Iterable[str], point_budget: int = DEFAULT_POINT_BUDGET,
                 budget: int | None = None) -> int | None:
    """Refuse (ValueError naming the estimate, the free memory and the fix) a run whose outputs ``kinds`` of
    ``source`` would need more than ``budget`` bytes (default: half the available RAM); before any decoding. With
    "poses" in ``kinds`` (fusion) the TSDF volume needs :data:`~memory_budget.FUSION_MIN_BYTES` more, and the bytes
    the budget leaves for it are returned (for :func:`run_frames`' ``fusion_bytes``; None: no fusion, or the free
    memory is unknown)."""
    from .memory_budget import FUSION_MIN_BYTES, available_memory_bytes, check_memory_budget, estimate_output_bytes

    kinds = set(kinds)
    fusion = "poses" in kinds
    left = check_memory_budget(estimate_output_bytes(source.width, source.height, source.count,
                                                     rgb_frames="frames" in kinds, points="points" in kinds,
                                                     point_budget=point_budget, meshes="meshes" in kinds,
                                                     fusion=fusion), available_memory_bytes(), budget=budget)
    return None if not fusion or left is None else left + FUSION_MIN_BYTES


def resolve_fov(fov: Any) -> str | np.ndarray | None:
    """``depth_stream``'s ``fov_mask`` from the module's choice: ``"auto"`` (detected from the first frames), None
    or ``"none"`` (every pixel is tissue), a bool ``[H, W]`` array, or the path of a mask image (nonzero = tissue,
    :func:`~fov.read_fov_mask`)."""
    if fov is None or (isinstance(fov, str) and fov in ("auto", "none")):
        return None if fov in (None, "none") else "auto"
    if isinstance(fov, np.ndarray):
        return fov
    from .fov import read_fov_mask

    return read_fov_mask(fov)


#: Output sequences of a run in browser order (the first, depth, is the browser's master) and their name suffixes.
OUTPUT_LABELS = {"depth": "depth", "frames": "frames", "points": "points", "meshes": "depth mesh", "poses": "camera"}


#: MRML node class of each output kind (the module writes a frame's output into one, then copies it into the sequence).
OUTPUT_NODE_CLASSES = {"depth": "vtkMRMLScalarVolumeNode", "frames": "vtkMRMLVectorVolumeNode",
                       "points": "vtkMRMLModelNode", "meshes": "vtkMRMLModelNode",
                       "poses": "vtkMRMLLinearTransformNode"}


def display_settings(kind: str, depth_range: tuple[float, float], color_by_depth: bool,
                     color_node_id: str) -> list[tuple[str, tuple]]:
    """How a run's output of ``kind`` is shown: the ``(setter, arguments)`` calls, in order, that the module makes on
    its display node (plain data, so that the choices are tested without Slicer).

    - "depth" (``vtkMRMLScalarVolumeDisplayNode``): the colour table ``color_node_id`` over ``depth_range`` (mm)
      and the threshold :data:`~slicer_helpers.DEPTH_THRESHOLD_MM`, which NaN (invalid) fails: invalid pixels are
      transparent instead of drawn in the "near" colour;
    - "points", "meshes" (``vtkMRMLModelDisplayNode``): 3-pixel points coloured by their "RGB" array as it is
      (direct mapping) or, with ``color_by_depth``, by "Depth" over ``depth_range`` with the colour table.
    """
    from vtkmodules.vtkFiltersCore import vtkAssignAttribute

    from .slicer_helpers import DEPTH_THRESHOLD_MM

    lo, hi = (float(v) for v in depth_range)
    if kind == "depth":
        return [("SetAndObserveColorNodeID", (color_node_id,)), ("SetAutoWindowLevel", (False,)),
                ("SetWindowLevelMinMax", (lo, hi)), ("SetAutoThreshold", (False,)),
                ("SetThreshold", DEPTH_THRESHOLD_MM), ("SetApplyThreshold", (True,))]
    if kind in ("points", "meshes"):
        return [("SetPointSize", (3,)),
                ("SetActiveScalar", ("Depth" if color_by_depth else "RGB", vtkAssignAttribute.POINT_DATA)),
                ("SetScalarRangeFlagFromString", ("UseManual" if color_by_depth else "UseDirectMapping",)),
                ("SetAndObserveColorNodeID", (color_node_id,)), ("SetScalarRange", (lo, hi)),
                ("SetScalarVisibility", (True,))]
    raise ValueError(f"kind must be 'depth', 'points' or 'meshes', got {kind!r}")


def output_kinds(source: FrameSource, *, points: bool = True, meshes: bool | None = None,
                 fuse: bool = False) -> list[str]:
    """The sequences a run fills (keys of :data:`OUTPUT_LABELS`, in order): "frames" only when the source has
    no RGB sequence of its own (a video or a volume); "meshes" by default (None) only for a single frame (a
    full-resolution mesh per frame of a clip is what exhausted memory); "poses" with fusion."""
    meshes = source.count == 1 if meshes is None else meshes
    wanted = {"depth": True, "frames": source.sequence is None, "points": points, "meshes": meshes, "poses": fuse}
    return [kind for kind in OUTPUT_LABELS if wanted[kind]]


def frame_outputs(frame: Any, intrinsics: Any, kinds: Iterable[str], pose: np.ndarray | None = None,
                  point_budget: int = DEFAULT_POINT_BUDGET) -> dict[str, Any]:
    """What one ``DepthFrame`` stores, by output kind (those in ``kinds``): "frames" uint8 ``[1, H, W, 3]``,
    "depth" float32 ``[1, H, W]`` mm (NaN = invalid), "points" / "meshes" RAS ``vtkPolyData`` (invalid pixels
    in neither; empty when the frame has no valid depth), "poses" the 4×4 camera-to-world ``pose`` in RAS.

    The cloud keeps at most ``point_budget`` points on a regular pixel grid (:func:`~memory_budget.decimate_mask`;
    0 = all) with point arrays "RGB" and "Depth" (mm); the mesh is the full-resolution ``depth_to_mesh``.
    """
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    from .geometry import backproject, point_mask
    from .polydata import depth_to_mesh, to_polydata

    kinds, depth, rgb = set(kinds), frame.depth_mm, frame.rgb
    valid = point_mask(depth, intrinsics)
    out: dict[str, Any] = {"depth": depth[None]}
    if "frames" in kinds:
        out["frames"] = rgb[None]
    if "points" in kinds:
        keep = decimate_mask(valid, point_budget)
        out["points"] = polydata_to_ras(to_polydata(backproject(depth, intrinsics, mask=keep), colors=rgb[keep],
                                                    scalars=depth[keep])) if keep.any() else vtkPolyData()
    if "meshes" in kinds:
        out["meshes"] = polydata_to_ras(depth_to_mesh(depth, intrinsics, rgb=rgb)) if valid.any() else vtkPolyData()
    if "poses" in kinds:
        out["poses"] = pose_to_ras(pose)
    return out


def ensure_weights(name: str, confirm: Callable[[], bool] | None,
                   open_progress: Callable[[str], tuple[Any, Callable[[float, str], bool]]]) -> None:
    """Official weights ``name`` in the local cache before loading: nothing when they are there; else ``confirm()``
    (None: do not ask; False: ``RuntimeError``, declined), then ``slicer_helpers.download_weights`` with the progress
    dialog of ``open_progress(name) -> (dialog, progress)``, closed afterwards (Cancel: ``Cancelled``)."""
    from .slicer_helpers import download_weights, weights_cached

    if weights_cached(name):
        return
    if confirm is not None and not confirm():
        raise RuntimeError(f"download of model {name!r} was declined")
    dialog, progress = open_progress(name)
    try:
        download_weights(name, progress)
    finally:
        dialog.close()


def dialog_progress(dialog: Any, process_events: Callable[[], Any]) -> Callable[[float, str], bool]:
    """``progress(fraction, text) -> bool`` that shows ``text`` and ``fraction`` (0-1) in a Qt progress dialog
    (``labelText``, ``value`` 0-100, ``wasCanceled``) and calls ``process_events()`` to repaint and let the user
    press Cancel; False once cancelled."""
    def progress(fraction: float, text: str) -> bool:
        dialog.labelText, dialog.value = text, int(100 * fraction)
        process_events()
        return not dialog.wasCanceled
    return progress


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_frames` returns: frames processed, display range (mm; the depth range when no frame had
    depth), fused RAS surface or None (no fusion, or nothing fused), and the field of view the stream used (bool
    ``[H, W]``, True = tissue; None when every pixel counted)."""

    frames: int
    display_range: tuple[float, float]
    fused: Any = None
    fov_mask: np.ndarray | None = None


def _track(tracker: Any, frame: Any) -> np.ndarray | None:
    """The camera pose of ``frame`` from the ICP ``tracker`` (None without one; NaN depth is skipped). A frame
    without any depth (a black screen) keeps the previous pose (``PoseTracker.last_pose``): ICP refuses a blank map,
    and one black frame must not end a run."""
    if tracker is None:
        return None
    return tracker.update(frame.depth_mm) if frame.valid.any() else tracker.last_pose


def run_frames(model: Any, source: FrameSource, intrinsics: Any, kinds: Iterable[str],
               write: Callable[[int, dict], Any], progress: Callable[[float, str], bool], *,
               point_budget: int = DEFAULT_POINT_BUDGET, near_mm: float | None = None, far_mm: float | None = None,
               voxel_mm: float = 1.0, temporal: bool = False, input_size: int | None = None,
               fov_mask: Any = "auto", calibrated: bool = False, detail_size: int | None = None,
               fusion_bytes: int | None = None) -> RunResult:
    """Stream ``source`` through ``depth_stream`` and call ``write(item, outputs)`` for each frame as it comes
    (``item``: the source item; ``outputs``: :func:`frame_outputs` of ``kinds``); nothing is kept per frame.

    Relative models map to ``[near_mm, far_mm]`` (default :data:`~alignment.DEFAULT_DEPTH_RANGE_MM`). With "poses"
    in ``kinds`` (fusion), each frame gets an ICP pose and is integrated into a TSDF volume (``voxel_mm``,
    truncation 4 voxels; a relative model's depth beyond ``far_mm`` is not fused, as in ``surgical-depth
    reconstruct``) whose surface is extracted at the end. ``fov_mask``: the field of view (:func:`resolve_fov`
    takes the module's choice). ``calibrated``: ``intrinsics`` are the scope's calibration (not a guessed field of
    view), so the depth is corrected to its lens (:mod:`.lens`). ``detail_size``: a second, larger read per frame
    (:mod:`.detail`; None: one read). ``fusion_bytes``: the most the TSDF volume may hold (:func:`check_memory`'s
    answer; None: its defaults). ``progress(fraction, text)`` is called after every
    frame and around the extraction; False raises :class:`Cancelled` (the stream is closed: decoding and inference
    stop).
    """
    from .icp import PoseTracker
    from .stream import depth_stream

    kinds = list(kinds)
    near_far = (near_mm or DEFAULT_DEPTH_RANGE_MM[0], far_mm or DEFAULT_DEPTH_RANGE_MM[1])

    def step(fraction: float, text: str) -> None:
        if not progress(fraction, text):
            raise Cancelled("cancelled by the user")

    tracker = tsdf = None
    if "poses" in kinds:
        from .memory_budget import FUSION_BYTES, fusion_limits
        from .tsdf import TSDFVolume

        tracker = PoseTracker(intrinsics)
        max_blocks, max_voxels = fusion_limits(FUSION_BYTES if fusion_bytes is None else fusion_bytes)
        tsdf = TSDFVolume(voxel_mm, 4 * voxel_mm, device=getattr(getattr(model, "device", None), "type", "cpu"),
                          max_depth=near_far[1] if model.output_kind == "disparity" else None,
                          max_blocks=max_blocks, max_voxels=max_voxels)
    shown, count, fov = DisplayRange(), 0, None
    stream = depth_stream(model, source.frames, depth_range=near_far, temporal=temporal, input_size=input_size,
                          fov_mask=resolve_fov(fov_mask), intrinsics=intrinsics if calibrated else None,
                          detail_size=detail_size)
    with closing(stream):
        for frame in stream:
            fov = frame.fov_mask  # one array for the whole stream
            pose = _track(tracker, frame)
            if tsdf is not None and frame.valid.any():
                tsdf.integrate(frame.depth_mm, frame.rgb, intrinsics, pose)
            write(source.item(frame.index), frame_outputs(frame, intrinsics, kinds, pose, point_budget))
            shown.update(frame.depth_mm)
            count += 1
            total = max(count, source.count)  # a video may hold more frames than it announced
            step(0.02 + 0.9 * count / total, f"Frame {count} of {total}")
    if count == 0:
        raise ValueError(f"{source.name}: no frame could be read")
    fused = None
    if tsdf is not None and tsdf.n_frames == 0:  # every frame black (or blank): nothing was fused
        logger.warning("%s: no frame has depth (black or blank frames?): no fused surface", source.name)
    elif tsdf is not None:
        step(0.93, "Extracting the fused surface")
        fused = polydata_to_ras(tsdf.extract_mesh())
        step(0.97, "Storing the fused surface")
    # no frame with depth (a black screen: the scope not on yet, as when live depth starts): the depth range shown
    return RunResult(count, shown.range(default=near_far), fused, fov)
