"""The Surgical Depth module's parameter node → the keyword arguments of its logic, without Slicer: the input
modes and field-of-view choices it offers, whether the input is ready, and ``process`` / ``startLive`` arguments
(plain data, so that the panel's choices are tested without Slicer)."""
from __future__ import annotations

from typing import Any

__all__ = ["FOV_CHOICES", "INPUT_MODES", "input_ready", "live_arguments", "process_arguments"]

#: The module's input modes and field-of-view choices (its parameter node's ``Choice`` lists; checked by pytest).
INPUT_MODES = ("video", "sequence", "volume", "live")
FOV_CHOICES = ("auto", "none", "file")


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

    same = ("startFrame", "frameStride", "maxFrames", "device", "precision", "inputSize", "detailSize", "fx", "fy",
            "cx", "cy", "nearMm", "farMm", "pointCloud", "pointBudget", "colorByDepth", "voxelMm", "backend")
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
            if key not in ("videoPath", "browser", "detailSize")}  # live frames are read once
    return {**args, "volume": p.inputVolume, "depthMesh": False,
            "recordFrames": int(p.liveRecordFrames) if p.liveRecord else 0}
