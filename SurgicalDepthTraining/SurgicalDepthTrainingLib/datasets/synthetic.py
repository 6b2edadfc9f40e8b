"""This project's synthetic sequences (``synthetic``), as written by ``surgical-depth synth`` / ``write_synthetic``.

```
<root>/                      one sequence (a dataset root may also hold several sequence subfolders)
  meta.json                  {"format": "surgical-depth-synthetic", "version": 1, "depth_scale_mm": 0.01, ...}
  intrinsics.json            {"fx", "fy", "cx", "cy", "width", "height", "distortion": null | {...}}
  poses.txt                  '#' comments, then "<frame_index> m00 m01 ... m33" (row-major camera-to-world, mm)
  rgb/000000.png ...         8-bit RGB PNG
  depth/000000.png ...       16-bit PNG, depth_mm = value * depth_scale_mm; 0 = invalid
```
``split``: sequence sub-folder names (comma-separated or a list). Default range 1e-3 mm .. the largest encodable
depth (``65535 * depth_scale_mm``), or the renderer's cap when the writer recorded one (``meta["generator"]
["max_depth_mm"]``; a top-level ``meta["max_depth_mm"]`` is read too).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.pose_io import read_poses

from ._base import (DatasetError, DepthDataset, Pair, find_dirs, read_text, select_split, sorted_files,
                    uint16_linear)

FORMAT = "surgical-depth-synthetic"
SUPPORTED_VERSIONS = (1,)
_FRAME_RX = re.compile(r"(\d+)\.png", re.IGNORECASE)


def read_meta(seq: Path) -> dict:
    path = seq / "meta.json"
    try:
        meta = json.loads(read_text(path, "synthetic metadata file"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DatasetError(f"{path}: 'format' must be {FORMAT!r}, got "
                           f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}")
    if meta.get("version") not in SUPPORTED_VERSIONS:
        raise DatasetError(f"{path}: unsupported version {meta.get('version')!r}, expected one of "
                           f"{SUPPORTED_VERSIONS}")
    scale = meta.get("depth_scale_mm")
    if not isinstance(scale, (int, float)) or not scale > 0:
        raise DatasetError(f"{path}: 'depth_scale_mm' must be a number > 0, got {scale!r}")
    return meta


def _depth_cap(meta: dict) -> float:
    """The largest depth (mm) a sequence's frames can hold: the renderer's cap (``generator.max_depth_mm``, where
    ``write_synthetic`` records it), a top-level ``max_depth_mm``, else the largest encodable depth."""
    generator = meta.get("generator") if isinstance(meta.get("generator"), dict) else {}
    cap = meta.get("max_depth_mm", generator.get("max_depth_mm"))
    return float(cap) if isinstance(cap, (int, float)) and cap > 0 else 65535 * float(meta["depth_scale_mm"])


def _poses(path: Path) -> dict[int, np.ndarray]:
    """The layout's ``poses.txt`` (:func:`SurgicalDepthLib.pose_io.read_poses`, frame index required)."""
    try:
        return read_poses(path, require_index=True)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


class Synthetic(DepthDataset):
    """Sequences in this project's ``synthetic`` layout; see the module docstring."""

    name = "synthetic"
    depth_unit = "mm"
    min_depth = 1e-3
    max_depth = None

    def __init__(self, root, split=None, **options) -> None:
        self._seq: dict[Path, dict] = {}
        user_max = options.get("max_depth")
        super().__init__(root, split, **options)
        if user_max is None:
            self.max_depth = max(_depth_cap(m["meta"]) for m in self._seq.values())

    def layout_hint(self) -> str:
        return "expected meta.json + intrinsics.json + poses.txt + rgb/NNNNNN.png + depth/NNNNNN.png"

    def _list_pairs(self) -> list[Pair]:
        wanted = select_split([], self.split, self.name)
        pairs: list[Pair] = []
        for seq in find_dirs(self.root, lambda f: (f / "meta.json").is_file()):
            if wanted is not None and seq.name.lower() not in wanted:
                continue
            self._seq[seq] = {"meta": read_meta(seq)}
            depths = {int(m.group(1)): p for m, p in sorted_files(seq / "depth", _FRAME_RX)} \
                if (seq / "depth").is_dir() else {}
            if not (seq / "rgb").is_dir():
                raise DatasetError(f"{seq}: synthetic sequence has no rgb/ folder")
            rgbs = [(int(m.group(1)), p) for m, p in sorted_files(seq / "rgb", _FRAME_RX)]
            pairs += self._pairs_by_index(rgbs, depths, seq, lambda i, rgb: seq / "depth" / rgb.name)
        return pairs

    def decode_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        scale = self._seq[path.parent.parent]["meta"]["depth_scale_mm"]
        return uint16_linear(path, float(scale))

    def intrinsics_for(self, pair: Pair, width: int, height: int) -> Intrinsics | None:
        info = self._seq[pair.sequence]
        if "intrinsics" not in info:
            path = pair.sequence / "intrinsics.json"
            info["intrinsics"] = Intrinsics.from_file(path) if path.is_file() else None
        intr = info["intrinsics"]
        if intr is None or intr.size == (width, height):
            return intr
        raise DatasetError(f"{pair.sequence / 'intrinsics.json'}: intrinsics are for {intr.width}x{intr.height} "
                           f"but {pair.rgb} is {width}x{height}")

    def pose_for(self, pair: Pair) -> np.ndarray | None:
        info = self._seq[pair.sequence]
        if "poses" not in info:
            path = pair.sequence / "poses.txt"
            info["poses"] = _poses(path) if path.is_file() else {}
        pose = info["poses"].get(pair.index)
        return None if pose is None else pose.copy()
