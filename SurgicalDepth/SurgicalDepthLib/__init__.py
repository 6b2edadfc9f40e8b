"""SurgicalDepthLib: Slicer-free monocular depth (Depth Anything V1/V2) and 3D reconstruction.

``import SurgicalDepthLib as sd`` gives the public API listed in ``__all__``. Submodules are imported on first
attribute access (PEP 562), so ``import SurgicalDepthLib`` is cheap (no torch/VTK until needed) — this matters
inside 3D Slicer, where the module panel imports the package at start-up.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it. No name may equal its submodule's: importing the submodule (as loading a
# model does) sets the package attribute of that name to the module, so the name would mean a function at one time
# and a module at another (the functions preprocess.preprocess and icp.icp are therefore not exported here)
_EXPORTS: dict[str, str] = {
    # model
    "ModelConfig": "configs",
    "MODEL_CONFIGS": "configs",
    "list_model_configs": "configs",
    "get_model_config": "configs",
    "DepthModel": "model",
    "DPTHead": "dpt",
    "load_model": "loading",
    "resolve_device": "loading",
    "load_state_dict_file": "checkpoints",
    "save_official": "checkpoints",
    "save_huggingface": "checkpoints",
    "save_checkpoint": "checkpoints",
    "official_to_hf": "checkpoints",
    "hf_to_official": "checkpoints",
    "CheckpointError": "checkpoints",
    "official_input_size": "preprocess",
    "WEIGHTS": "weights",
    "download": "weights",
    "cache_dir": "weights",
    "colorize": "colormap",
    # camera and geometry
    "Intrinsics": "camera",
    "parse_intrinsics": "camera",
    "lens_factor": "lens",
    "transform_points": "geometry",
    "fit_scale_shift": "alignment",
    "PoseTracker": "icp",
    "load_mesh": "export",
    "backproject": "geometry",
    "to_polydata": "polydata",
    "depth_to_mesh": "polydata",
    "voxel_downsample": "geometry",
    "remove_outliers": "geometry",
    "disparity_to_depth": "alignment",
    "align_scale": "alignment",
    "TSDFVolume": "tsdf",
    "estimate_poses": "icp",
    # stream and video
    "depth_stream": "stream",
    "DepthFrame": "stream",
    "OutputKind": "depth_kind",
    "SavedPredictions": "saved_predictions",
    "detect_fov_mask": "fov",
    "DepthService": "live",
    "export_model": "backends",
    "choose_backend": "backends",
    "ProgressReporter": "progress",
    "open_frames": "video",
    "FrameReader": "video",
    "VideoDecodeError": "video",
    "read_image": "video",
    "TemporalAligner": "temporal",
    "flicker": "temporal",
    "robust_range": "colormap",
    "DepthSequenceWriter": "depth_sequence",
    "save_depth_sequence_nrrd": "depth_sequence",
    "load_depth_sequence_nrrd": "depth_sequence",
    "save_points": "export",
    "save_mesh": "export",
    "save_depth": "depth_io",
    "load_depth": "depth_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'SurgicalDepthLib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
