"""Write rendered frames in the ``synthetic`` on-disk layout (read by the ``synthetic`` dataset loader).

```
<root>/meta.json  intrinsics.json  poses.txt  rgb/000000.png ...  depth/000000.png ...  .surgical-depth-run
```
``depth/*.png`` are uint16 with ``depth_mm = value * 0.01``; 0 = invalid (also depth beyond 655.35 mm).
The whole folder is built under a temporary name and renamed at the end, so an interrupted run leaves nothing.
It is written as a :class:`~SurgicalDepthLib.run_folder.RunFolder` (of the command ``synth``): its manifest lists
every file, so another command refuses to write into the data set unless told ``--overwrite``.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from SurgicalDepthLib.atomic_io import atomic_dir, atomic_path
from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.depth_io import encode_scaled_png, report_disk_full
from SurgicalDepthLib.pose_io import POSE_FILE_HEADER, format_pose_line
from SurgicalDepthLib.run_folder import RunFolder

logger = logging.getLogger(__name__)

FORMAT = "surgical-depth-synthetic"
VERSION = 1
DEPTH_SCALE_MM = 0.01
DEPTH_ENCODING = "uint16 png, depth_mm = value * 0.01, 0 = invalid"


def encode_depth(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float depth in mm [H, W] + validity -> uint16 [H, W] (``round(depth / 0.01)``, 0 = invalid/out of range)."""
    value = np.round(np.where(valid, depth, 0.0).astype(np.float64) / DEPTH_SCALE_MM)
    value = np.where((value > 0) & (value <= 65535), value, 0)
    return value.astype(np.uint16)


def _write_png(path: Path, array: np.ndarray) -> None:
    # encoded in memory, written by Python: a full disk is an OSError with its errno (cv2.imwrite only says False)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"OpenCV could not encode {path.name} ({array.dtype} {array.shape})")
    _write_bytes(path, buf.tobytes())


def _write_bytes(path: Path, data: bytes) -> None:
    with report_disk_full(path), atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_text(path: Path, text: str) -> None:
    with report_disk_full(path), atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_synthetic(frames: Iterable[dict], root: str | os.PathLike, meta: dict, replace: bool = False,
                    replaceable: Callable[[Path], None] | None = None) -> Path:
    """Write ``frames`` (dicts with ``image``, ``depth``, ``valid``, ``intrinsics``, ``pose``) to ``root``.

    Args:
        frames: frame dicts as returned by ``render_clip`` (may be a lazy iterator); all share one intrinsics.
        root: output folder; must not exist yet or be empty (it appears only when everything is written), unless
            ``replace``: then an existing ``root`` is replaced once the new one is complete (``atomic_dir``), after
            ``replaceable(root)`` (if given) has checked it once more.
        meta: at least ``organ``, ``seed``, ``generator`` (the ``SceneConfig`` as a dict).
    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    for key in ("organ", "seed", "generator"):
        if key not in meta:
            raise ValueError(f"meta must contain {key!r}; got keys {sorted(meta)}")
    # the manifest's paths are relative, so it stays valid when the finished folder is renamed to ``root``
    with atomic_dir(root, replace=replace, replaceable=replaceable) as tmp, RunFolder(tmp, "synth") as run:
        intrinsics: Intrinsics | None = None
        pose_lines = [POSE_FILE_HEADER]
        count = 0
        for i, frame in enumerate(frames):
            image, depth, valid = frame["image"], frame["depth"], frame["valid"]
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"frame {i}: image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
            if depth.shape != image.shape[:2] or valid.shape != image.shape[:2]:
                raise ValueError(f"frame {i}: depth {depth.shape} and valid {valid.shape} must be "
                                 f"{image.shape[:2]}")
            if intrinsics is None:
                intrinsics = frame["intrinsics"]
            elif frame["intrinsics"] != intrinsics:
                raise ValueError(f"frame {i}: intrinsics {frame['intrinsics']} differ from frame 0's {intrinsics}")
            pose_lines.append(format_pose_line(i, frame["pose"]))  # checks the 4x4 shape
            _write_png(run.path(f"rgb/{i:06d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            # with save_depth's scale chunk, so sd.load_depth reads these files in mm too
            _write_bytes(run.path(f"depth/{i:06d}.png"), encode_scaled_png(encode_depth(depth, valid), DEPTH_SCALE_MM,
                                                                         "mm"))
            count += 1
        if intrinsics is None:
            raise ValueError("frames is empty: nothing to write")
        _write_text(run.path("poses.txt"), "\n".join(pose_lines) + "\n")
        intr = {k: getattr(intrinsics, k) for k in ("fx", "fy", "cx", "cy", "width", "height", "distortion")}
        _write_text(run.path("intrinsics.json"), json.dumps(intr, indent=2) + "\n")
        full = {"format": FORMAT, "version": VERSION, "organ": meta["organ"], "seed": meta["seed"],
                "frames": count, "depth_scale_mm": DEPTH_SCALE_MM, "depth_encoding": DEPTH_ENCODING,
                "generator": meta["generator"]}
        _write_text(run.path("meta.json"), json.dumps(full, indent=2) + "\n")
    logger.debug("wrote %d synthetic frames to %s", count, root)
    return root
