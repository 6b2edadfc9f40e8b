"""One Slicer run without MRML: which frames it reads, the weights it needs, the per-frame loop that feeds the scene
and how the outputs are shown.

The Surgical Depth module builds a :class:`FrameSource` (a video through :func:`video_source`, or the frames of
a sequence browser or a volume), then :func:`run_frames` streams it through ``sd.depth_stream`` (the one inference
loop) and hands each frame at once to the module's ``write`` callback, which stores it in MRML sequences: nothing
is kept per frame here. With fusion, each frame also goes through ICP
(:class:`~SurgicalDepthLib.icp.PoseTracker`) and TSDF integration, so cancelling stops those too. Point clouds and
meshes per frame come from :func:`frame_outputs` (RAS, decimated to a point budget, NaN depth left out).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .alignment import DEFAULT_DEPTH_RANGE_MM
from .memory_budget import DEFAULT_POINT_BUDGET, decimate_mask
from .slicer_helpers import Cancelled, image_ijk_to_ras, index_value, polydata_to_ras, pose_to_ras


def select_frames(n_items: int, start: int = 0, stride: int = 1, max_frames: int = 0,
                  current: int | None = None) -> range:
    """Items of an ``n_items`` long source to process: the ``current`` item alone when given ("run on current
    frame"), else ``start, start + stride, ...``, at most ``max_frames`` of them (0 = no limit).

    Raises ValueError naming the value when the selection is empty or an argument is out of range.
    """
    for name, value, low in (("start frame", start, 0), ("frame stride", stride, 1), ("max. frames", max_frames, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if n_items < 1:
        raise ValueError("the input has no frames")
    if current is not None:
        if not 0 <= current < n_items:
            raise ValueError(f"the selected item {current} is not one of the {n_items} frames (is an item "
                             "selected in the sequence browser?)")
        return range(current, current + 1)
    if start >= n_items:
        raise ValueError(f"start frame {start} is past the last frame ({n_items - 1})")
    stop = n_items if max_frames == 0 else min(n_items, start + max_frames * stride)
    return range(start, stop, stride)


@dataclass
class FrameSource:
    """The frames one run reads (built by the module from a video, a sequence browser or a volume).

    ``frames``: what :func:`~SurgicalDepthLib.stream.depth_stream` takes (an opened ``FrameReader`` or an iterable
    of RGB arrays); ``items``: the selected source items; ``by_source_index``: whether the stream's
    ``DepthFrame.index`` is already the source item (a ``FrameReader``) or the position in ``items``;
    ``index_value(item)``: the output sequences' index value; ``ijk_to_ras(item)``: 4×4 geometry of the depth
    volume; ``sequence``: the input's own RGB frames sequence, shared by the outputs' browser (None: the run
    stores the RGB frames it reads in a new sequence).
    """

    name: str
    frames: Any
    items: range
    width: int
    height: int
    index_value: Callable[[int], str]
    ijk_to_ras: Callable[[int], np.ndarray]
    fps: float | None = None
    sequence: Any = None
    by_source_index: bool = False

    @property
    def count(self) -> int:
        return len(self.items)

    def item(self, stream_index: int) -> int:
        """Source item of a ``DepthFrame.index``."""
        return stream_index if self.by_source_index else self.items[stream_index]


def video_source(path: Any, start: int = 0, stride: int = 1, max_frames: int = 0,
                 current_only: bool = False) -> FrameSource:
    """:class:`FrameSource` of a video, image folder, glob or image (``sd.open_frames``): opened, not decoded.

    ``current_only``: only the first frame of the range (what "run on current frame" means for a file). Its
    geometry is :func:`~slicer_helpers.image_ijk_to_ras`; index values are frame times when the fps is known.
    """
    from .video import open_frames

    with open_frames(path) as probe:
        items = select_frames(probe.frame_count, start, stride, 1 if current_only else max_frames)
    reader = open_frames(path, start=items.start, stop=items.stop, stride=items.step, prefetch=2)
    height, width = reader.size
    ijk = image_ijk_to_ras(width, height)
    return FrameSource(Path(str(path)).stem or "video", reader, items, width, height,
                       lambda item: index_value(item, reader.fps), lambda item: ijk, fps=reader.fps,
                       by_source_index=True)


def check_rgb_sequence(class_name: str | None) -> None:
    """ValueError unless a browser's master sequence holds RGB vector volumes (``class_name``: its data nodes')."""
    if class_name != "vtkMRMLVectorVolumeNode":
        raise ValueError("process: give videoPath, volume or a browser whose master sequence holds RGB vector "
                         f"volumes (vtkMRMLVectorVolumeNode), not {class_name}")


def array_source(name: str, arrays: list, items: range, index_value: Callable[[int], str],
                 ijk_to_ras: Callable[[int], np.ndarray], sequence: Any = None) -> FrameSource:
    """:class:`FrameSource` of RGB volume arrays ``[1, H, W, C >= 3]`` (one per item; views into the volumes'
    memory, made by the caller on the main thread): the stream's reading thread only copies their pixels."""
    from .slicer_helpers import rgb_from_volume_array

    if not arrays or np.ndim(arrays[0]) != 4:
        raise ValueError(f"{name}: expected RGB vector volumes [1, H, W, 3], got "
                         f"{np.shape(arrays[0]) if arrays else 'no frame'}")
    frames = (rgb_from_volume_array(array, name) for array in arrays)
    return FrameSource(name, frames, items, arrays[0].shape[2], arrays[0].shape[1], index_value, ijk_to_ras,
                       sequence=sequence)


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

    def range(self) -> tuple[float, float]:
        """``(lo, hi)`` with ``hi > lo``; ValueError when no frame had a valid depth."""
        if not math.isfinite(self.lo):
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
                 budget: int | None = None) -> None:
    """Refuse (ValueError naming the estimate, the free memory and the fix) a run whose outputs ``kinds`` of
    ``source`` would need more than ``budget`` bytes (default: half the available RAM); before any decoding."""
    from .memory_budget import available_memory_bytes, check_memory_budget, estimate_output_bytes

    kinds = set(kinds)
    check_memory_budget(estimate_output_bytes(source.width, source.height, source.count, rgb_frames="frames" in kinds,
                                              points="points" in kinds, point_budget=point_budget,
                                              meshes="meshes" in kinds), available_memory_bytes(), budget=budget)


#: The module's input modes and field-of-view choices (its parameter node's ``Choice`` lists; checked by pytest).
INPUT_MODES = ("video", "sequence", "volume", "live")
FOV_CHOICES = ("auto", "none", "file")


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


def _fov_choice(p: Any) -> str | None:
    """The parameter node's field of view: "auto", "none" or the mask image's path."""
    from .slicer_helpers import path_or_none

    if p.fovMode not in FOV_CHOICES:
        raise ValueError(f"field of view must be one of {FOV_CHOICES}, got {p.fovMode!r}")
    if p.fovMode != "file":
        return p.fovMode
    if path_or_none(p.fovPath) is None:
        raise ValueError("field of view: 'file' was chosen but no mask image was given")
    return path_or_none(p.fovPath)


def input_ready(p: Any) -> bool:
    """Whether the parameter node ``p`` has the input its mode needs (a video path, a browser or a volume)."""
    from .slicer_helpers import path_or_none

    return p is not None and bool({"video": path_or_none(p.videoPath), "sequence": p.inputBrowser,
                                   "volume": p.inputVolume, "live": p.inputVolume}.get(p.inputMode))


def process_arguments(p: Any, all_frames: bool) -> dict[str, Any]:
    """Keyword arguments of ``SurgicalDepthLogic.process`` from the module's parameter node ``p`` (any object with
    its fields): the chosen input only (live: the volume's current image), the model source, "current frame" when
    not ``all_frames`` (and then no fusion, which needs a sequence); per-frame meshes when ticked, else only for a
    single frame."""
    from .slicer_helpers import model_source, path_or_none

    same = ("startFrame", "frameStride", "maxFrames", "device", "precision", "inputSize", "fx", "fy", "cx", "cy",
            "nearMm", "farMm", "pointCloud", "pointBudget", "colorByDepth", "voxelMm", "backend")
    inputs = {"video": {"videoPath": path_or_none(p.videoPath)}, "sequence": {"browser": p.inputBrowser},
              "volume": {"volume": p.inputVolume}, "live": {"volume": p.inputVolume}}
    if p.inputMode not in inputs:
        raise ValueError(f"input mode must be one of {tuple(inputs)}, got {p.inputMode!r}")
    return {**inputs[p.inputMode], **{key: getattr(p, key) for key in same}, "currentOnly": not all_frames,
            "model": model_source(p.modelChoice, str(p.modelPath), p.registryName),
            "calibration": path_or_none(p.calibrationPath), "fuse": bool(p.fuse and all_frames),
            "depthMesh": True if p.depthMesh else None, "fovMask": _fov_choice(p)}  # unticked: one frame's mesh


def live_arguments(p: Any) -> dict[str, Any]:
    """Keyword arguments of ``SurgicalDepthLogic.startLive`` from the module's parameter node ``p``: those of
    :func:`process_arguments` for the live volume's current image (without a depth mesh, which live frames do
    not update) and the recording budget ``recordFrames`` (0 = no recording)."""
    if p.inputVolume is None:
        raise ValueError("live: choose the updating RGB volume (e.g. an OpenIGTLink connector's image)")
    args = {key: value for key, value in process_arguments(p, all_frames=False).items()
            if key not in ("videoPath", "browser")}
    return {**args, "volume": p.inputVolume, "depthMesh": False,
            "recordFrames": int(p.liveRecordFrames) if p.liveRecord else 0}


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

    from .geometry import backproject, valid_depth_mask
    from .polydata import depth_to_mesh, to_polydata

    kinds, depth, rgb = set(kinds), frame.depth_mm, frame.rgb
    valid = valid_depth_mask(depth)
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
    """What :func:`run_frames` returns: frames processed, display range (mm), fused RAS surface or None, and the
    field of view the stream used (bool ``[H, W]``, True = tissue; None when every pixel counted)."""

    frames: int
    display_range: tuple[float, float]
    fused: Any = None
    fov_mask: np.ndarray | None = None


def run_frames(model: Any, source: FrameSource, intrinsics: Any, kinds: Iterable[str],
               write: Callable[[int, dict], Any], progress: Callable[[float, str], bool], *,
               point_budget: int = DEFAULT_POINT_BUDGET, near_mm: float | None = None, far_mm: float | None = None,
               voxel_mm: float = 1.0, temporal: bool = False, input_size: int | None = None,
               fov_mask: Any = "auto") -> RunResult:
    """Stream ``source`` through ``depth_stream`` and call ``write(item, outputs)`` for each frame as it comes
    (``item``: the source item; ``outputs``: :func:`frame_outputs` of ``kinds``); nothing is kept per frame.

    Relative models map to ``[near_mm, far_mm]`` (default :data:`~alignment.DEFAULT_DEPTH_RANGE_MM`). With "poses"
    in ``kinds`` (fusion), each frame gets an ICP pose and is integrated into a TSDF volume (``voxel_mm``,
    truncation 4 voxels; a relative model's depth beyond ``far_mm`` is not fused, as in ``surgical-depth
    reconstruct``) whose surface is extracted at the end. ``fov_mask``: the field of view (:func:`resolve_fov`
    takes the module's choice). ``progress(fraction, text)`` is called after every frame
    and around the extraction; False raises :class:`Cancelled` (the stream is closed: decoding and inference stop).
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
        from .tsdf import TSDFVolume

        tracker = PoseTracker(intrinsics)
        tsdf = TSDFVolume(voxel_mm, 4 * voxel_mm, device=getattr(getattr(model, "device", None), "type", "cpu"),
                          max_depth=near_far[1] if model.output_kind == "disparity" else None)
    shown, count, fov = DisplayRange(), 0, None
    stream = depth_stream(model, source.frames, depth_range=near_far, temporal=temporal, input_size=input_size,
                          fov_mask=resolve_fov(fov_mask))
    with closing(stream):
        for frame in stream:
            fov = frame.fov_mask  # one array for the whole stream
            pose = tracker.update(frame.depth_mm) if tracker is not None else None  # NaN depth is skipped
            if tsdf is not None:
                tsdf.integrate(frame.depth_mm, frame.rgb, intrinsics, pose)
            write(source.item(frame.index), frame_outputs(frame, intrinsics, kinds, pose, point_budget))
            shown.update(frame.depth_mm)
            count += 1
            step(0.02 + 0.9 * count / source.count, f"Frame {count} of {source.count}")
    if count == 0:
        raise ValueError(f"{source.name}: no frame could be read")
    fused = None
    if tsdf is not None:
        step(0.93, "Extracting the fused surface")
        fused = polydata_to_ras(tsdf.extract_mesh())
        step(0.97, "Storing the fused surface")
    return RunResult(count, shown.range(), fused, fov)
