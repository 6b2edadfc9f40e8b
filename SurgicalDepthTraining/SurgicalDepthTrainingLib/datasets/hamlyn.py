"""Hamlyn (``hamlyn``): the rectified Hamlyn sequences with stereo depth released with Endo-Depth-and-Motion.

Recasens et al., "Endo-Depth-and-Motion: reconstruction and tracking in endoscopic videos using depth networks
and photometric constraints", IEEE RA-L 6(4), 2021; github.com/UZ-SLAMLab/Endo-Depth-and-Motion (data from the
Hamlyn Centre laparoscopic/endoscopic video datasets, rectified, with depth from stereo).
```
<root>/rectified01/image01/0000000000.jpg ...   left RGB (image02/ = right)
<root>/rectified01/depth01/0000000000.png ...   left depth, uint16 PNG in millimetres (depth02/ = right)
<root>/rectified01/intrinsics.txt               3x3 (or 3x4) camera matrix of the rectified images
```
Folders ``color/`` + ``depth/`` (the tracking-test layout of the same release) are accepted too.

- Depth: uint16 PNG, ``depth_mm = value`` (1 mm per unit), 0 = invalid (no stereo match). 8-bit is refused.
- Intrinsics: ``intrinsics.txt`` in the sequence folder (9 or 12 numbers, row-major; the first 3x3 is K).
- ``split``: sequence names (``"rectified01"`` or ``"01"``), comma-separated or a list; ``side="left"``
  (default) or ``"right"`` picks image01/depth01 or image02/depth02.
- Default evaluation range 1e-3 .. 150 mm (the cap used by EndoDAC / AF-SfMLearner-style Hamlyn evaluations).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from SurgicalDepthLib.camera import Intrinsics

from ._base import (DatasetError, DepthDataset, Pair, child_dir, find_dirs, read_text, select_split,
                    sorted_files, uint16_linear)

HAMLYN_MAX_MM = 150.0
_ANY_IMAGE = re.compile(r".+\.(png|jpg|jpeg)", re.IGNORECASE)


def _split_key(text: str) -> str:
    text = text.strip().lower()
    return f"rectified{text}" if text.isdigit() else text


class Hamlyn(DepthDataset):
    """Rectified Hamlyn RGB + stereo depth (mm); see the module docstring."""

    name = "hamlyn"
    depth_unit = "mm"
    min_depth = 1e-3
    max_depth = HAMLYN_MAX_MM

    def __init__(self, root, split=None, *, side: str = "left", **options) -> None:
        if side not in ("left", "right"):
            raise ValueError(f"hamlyn: side must be 'left' or 'right', got {side!r}")
        self.side = side
        self._intr: dict[Path, Intrinsics | None] = {}
        super().__init__(root, split, **options)

    def _dirs(self, seq: Path) -> tuple[Path | None, Path | None]:
        n = "01" if self.side == "left" else "02"
        img, dep = child_dir(seq, f"image{n}"), child_dir(seq, f"depth{n}")
        if img is None and dep is None and self.side == "left":
            img, dep = child_dir(seq, "color"), child_dir(seq, "depth")
        return img, dep

    def _is_sequence(self, folder: Path) -> bool:
        img, _ = self._dirs(folder)
        return img is not None

    def layout_hint(self) -> str:
        return "expected rectifiedNN/image01/*.jpg + depth01/*.png (or color/ + depth/)"

    def _list_pairs(self) -> list[Pair]:
        wanted = select_split([], self.split, self.name, _split_key)
        pairs: list[Pair] = []
        for seq in find_dirs(self.root, self._is_sequence):
            if wanted is not None and seq.name.lower() not in wanted:
                continue
            img_dir, dep_dir = self._dirs(seq)
            if dep_dir is None:
                raise DatasetError(f"{seq}: Hamlyn sequence has {img_dir.name}/ but no depth folder")
            depths = {p.stem: p for _, p in sorted_files(dep_dir, r".+\.png")}
            for _, rgb in sorted_files(img_dir, _ANY_IMAGE):
                depth = depths.get(rgb.stem)
                if depth is None:
                    self._missing(rgb, dep_dir / f"{rgb.stem}.png")
                    continue
                pairs.append(Pair(rgb, depth, seq))
        return pairs

    def decode_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return uint16_linear(path, 1.0)

    def intrinsics_for(self, pair: Pair, width: int, height: int) -> Intrinsics | None:
        if pair.sequence not in self._intr:
            self._intr[pair.sequence] = _read_intrinsics(pair.sequence / "intrinsics.txt", width, height)
        return self._intr[pair.sequence]


def _read_intrinsics(path: Path, width: int, height: int) -> Intrinsics | None:
    if not path.is_file():
        return None
    tokens = [t for t in re.split(r"[,\s;\[\]]+", read_text(path, "Hamlyn intrinsics file")) if t]
    try:
        values = np.asarray([float(t) for t in tokens])
    except ValueError as exc:
        raise DatasetError(f"{path}: intrinsics must be 9 or 12 numbers, found a non-number ({exc})") from exc
    if values.size == 9:
        k = values.reshape(3, 3)
    elif values.size == 12:
        k = values.reshape(3, 4)[:, :3]
    else:
        raise DatasetError(f"{path}: intrinsics must be 9 (3x3) or 12 (3x4) numbers, got {values.size}")
    return Intrinsics.from_matrix(k, width, height)
