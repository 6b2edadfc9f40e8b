"""SERV-CT (``servct``): stereo-endoscopic porcine torso images with depth from cone-beam CT.

Edwards et al., "SERV-CT: A disparity dataset from cone-beam CT for validation of endoscopic 3D reconstruction",
MedIA 76:102302, 2022 (PMC8961000); data: ucl.ac.uk/interventional-surgical-sciences/serv-ct (two experiments x
8 rectified stereo pairs). Layout as distributed (and as read by public SERV-CT evaluation code):
```
<root>/Experiment_1/Left_rectified/001.png ...              rectified left RGB (8-bit)
<root>/Experiment_1/Reference_CT/DepthL/001.png ...         left depth, uint16 PNG (CT-aligned reference)
<root>/Experiment_1/Reference_CT/Disparity/001.png ...      (not read)
<root>/Experiment_1/Reference_RGB/DepthL/001.png ...        alternative reference (RGB-refined alignment)
<root>/Experiment_1/Rectified_calibration/001.json          {"P1": {"data": [12 numbers]}, "P2": ...}
```
- Depth: uint16 PNG, ``depth_mm = value / 256`` (disparity and depth are both stored in 1/256 units, e.g.
  2560 -> 10 mm); 0 = no reference (invalid). 8-bit is refused.
- Valid mask: also without the pixels that ``<reference>/OcclusionL/<frame>.png`` (when present) colours pure
  blue, "outside the reference surface": the authors' toolkit (servcttk ``parse_occlusion_image``) evaluates only
  its mask and never looks at the depth value there. The other colours (yellow: outside the right image; red,
  green: seen by one camera only) stay valid, as in the toolkit's ``occ`` evaluation.
- ``reference="CT"`` (default) or ``"RGB"`` picks ``Reference_CT`` or ``Reference_RGB``; the names of the
  authors' toolkit (surgical-vision/servcttk), ``Ground_truth_CT`` and ``Ground_truth_RGB``, are accepted too. The
  RGB reference exists for some experiments only: without a ``split``, experiments lacking it are left out.
- Intrinsics: K = the left 3x3 of ``P1`` from ``Rectified_calibration/<frame>.json`` (rectified camera, no
  distortion), else None.
- ``split``: experiment names (``"Experiment_1"`` or ``"1"``), comma-separated or a list.
- Default evaluation range 1e-3 .. 300 mm: the paper sets no cap; 300 mm covers the whole scene depth.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from SurgicalDepthLib.camera import Intrinsics

from ._base import (DatasetError, DepthDataset, Pair, child_dir, find_dirs, read_rgb, read_text, select_split,
                    sorted_files, uint16_linear)

SERVCT_UNITS_PER_MM = 256.0
SERVCT_MAX_MM = 300.0
_PNG = re.compile(r".+\.png", re.IGNORECASE)


def _split_key(text: str) -> str:
    text = text.strip().lower()
    return f"experiment_{text}" if text.isdigit() else text


class SERVCT(DepthDataset):
    """SERV-CT rectified left images + CT depth; see the module docstring."""

    name = "servct"
    depth_unit = "mm"
    min_depth = 1e-3
    max_depth = SERVCT_MAX_MM

    def __init__(self, root, split=None, *, reference: str = "CT", **options) -> None:
        if str(reference).upper() not in ("CT", "RGB"):
            raise ValueError(f"servct: reference must be 'CT' or 'RGB', got {reference!r}")
        self.reference = str(reference).upper()
        super().__init__(root, split, **options)

    def layout_hint(self) -> str:
        return "expected Experiment_N/Left_rectified/NNN.png + Experiment_N/Reference_CT/DepthL/NNN.png"

    def _depth_dir(self, exp: Path) -> Path | None:
        names = (f"Reference_{self.reference}", f"Ground_truth_{self.reference}")
        ref = child_dir(exp, *names)
        return child_dir(ref, "DepthL") if ref is not None else None

    def _list_pairs(self) -> list[Pair]:
        wanted = select_split([], self.split, self.name, _split_key)
        pairs: list[Pair] = []
        for exp in find_dirs(self.root, lambda f: child_dir(f, "Left_rectified") is not None):
            if wanted is not None and exp.name.lower() not in wanted:
                continue
            left = child_dir(exp, "Left_rectified")
            ddir = self._depth_dir(exp)
            if ddir is None and self.reference == "RGB" and wanted is None:
                continue  # the RGB-refined reference exists for some experiments only (Experiment_2)
            depths = {} if ddir is None else {p.stem: p for _, p in sorted_files(ddir, _PNG)}
            for _, rgb in sorted_files(left, _PNG):
                depth = depths.get(rgb.stem)
                if depth is None:
                    self._missing(rgb, (ddir or exp / f"Reference_{self.reference}" / "DepthL") / rgb.name)
                    continue
                pairs.append(Pair(rgb, depth, exp))
        return pairs

    def decode_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        depth, valid = uint16_linear(path, 1.0 / SERVCT_UNITS_PER_MM)
        occlusion = child_dir(path.parent.parent, "OcclusionL")
        if occlusion is not None and (occlusion / path.name).is_file():
            valid &= ~no_reference(occlusion / path.name, depth.shape)
        return depth, valid

    def intrinsics_for(self, pair: Pair, width: int, height: int) -> Intrinsics | None:
        calib = child_dir(pair.sequence, "Rectified_calibration")
        path = None if calib is None else calib / f"{pair.rgb.stem}.json"
        if path is None or not path.is_file():
            return None
        text = read_text(path, "SERV-CT calibration file")
        try:
            p1 = np.asarray(json.loads(text)["P1"]["data"], dtype=np.float64)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: expected JSON with 'P1': {{'data': [12 numbers]}} ({exc})") from exc
        if p1.size != 12:
            raise DatasetError(f"{path}: 'P1' must hold 12 numbers (3x4), got {p1.size}")
        return Intrinsics.from_matrix(p1.reshape(3, 4)[:, :3], width, height)


def no_reference(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """bool ``[H, W]``: the pixels a SERV-CT occlusion image colours pure blue (RGB 0, 0, 255: no reference).

    Raises:
        DatasetError: unreadable file, or not of the depth map's size ``shape`` (H, W).
    """
    rgb = read_rgb(path)
    if rgb.shape[:2] != tuple(shape):
        raise DatasetError(f"{path}: occlusion image is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but its depth map is "
                           f"{shape[1]}x{shape[0]}")
    return np.all(rgb == np.array([0, 0, 255], np.uint8), axis=-1)

