"""LIIT (``liit``): Laparoscopic Image-to-Image Translation data (simulated liver-surgery scenes) with depth.

Pfeiffer et al., "Generating large labeled data sets for laparoscopic image processing tasks using unpaired
image-to-image translation", MICCAI 2019 (arXiv:1907.02882); data: opencas.dkfz.de/image2image (archives
``inputs.7z``, ``stylernd.7z``, ``styleFromCholec80.7z``, ``labels.7z`` and the depth labels). Layout of the
extracted archives, as used by public loaders of this data (e.g. DKFZ ``mml`` image2image task creator):
```
<root>/simulated/<patient>/inputs/img00000.png           rendered (simulated) RGB
<root>/simulated/<patient>/labels/lbl00000.png           segmentation (not read)
<root>/simulated/<patient>/depth(s)/<...00000...>.<ext>   rendered depth
<root>/stylernd/<patient>/style_00/img00000.png          translation, random style  (style="stylernd")
<root>/styleFromCholec80/<patient>/style_00/img00000.png translation, Cholec80 style (style="styleFromCholec80")
```
Pairs match by the frame number in the file names (``img00000`` <-> ``...00000...``).

**The published description of the depth encoding is unclear** (the paper and project page say only that depth
maps are provided with each rendered view, in the scene's millimetre units). We therefore read depth as
millimetres: float files (EXR, float TIFF, .npy) as stored; integer files need ``depth_scale=`` (mm per stored
unit; 8-bit files are refused unless ``require_16bit=False``). OpenEXR needs OpenCV's EXR codec
(``OPENCV_IO_ENABLE_OPENEXR=1`` set before Python starts); otherwise the error names the file. 0 / non-finite
= invalid. Intrinsics: None (pass ``intrinsics=``).
``split``: patient folder names (comma-separated or a list); ``style=None`` (default: the simulated inputs),
``"stylernd"`` or ``"styleFromCholec80"`` with ``style_index`` (default 0 -> ``style_00``).
Default evaluation range 1e-3 .. 300 mm (laparoscopic working distances; no published cap).
"""
from __future__ import annotations

import re
from pathlib import Path

from ._base import Pair, child_dir, find_dirs, frame_number, select_split, sorted_files
from .folder import Folder

_DEPTH_DIRS = ("depth", "depths")
_IMAGE_RX = re.compile(r".*\d.*\.(png|jpg|jpeg)", re.IGNORECASE)
_DEPTH_RX = re.compile(r".*\d.*\.(exr|tif|tiff|npy|png)", re.IGNORECASE)
LIIT_MAX_MM = 300.0
STYLES = ("stylernd", "styleFromCholec80")


def _is_patient(folder: Path) -> bool:
    return child_dir(folder, "inputs") is not None and child_dir(folder, *_DEPTH_DIRS) is not None


class LIIT(Folder):
    """LIIT simulated/translated laparoscopic images + rendered depth (mm); see the module docstring."""

    name = "liit"
    depth_unit = "mm"
    min_depth = 1e-3
    max_depth = LIIT_MAX_MM

    def __init__(self, root, split=None, *, style: str | None = None, style_index: int = 0,
                 depth_scale: float | None = None, **options) -> None:
        if style is not None and style not in STYLES:
            raise ValueError(f"liit: style must be None or one of {STYLES}, got {style!r}")
        self._split, self.style, self.style_index = split, style, int(style_index)
        super().__init__(root, None, depth_scale=depth_scale, **options)
        self.split = split

    def layout_hint(self) -> str:
        return "expected simulated/<patient>/inputs/imgNNNNN.png + simulated/<patient>/depth(s)/...NNNNN..."

    def _image_dir(self, patient: Path) -> Path | None:
        if self.style is None:
            return child_dir(patient, "inputs")
        # translations live in a sibling tree: <root>/<style>/<patient>/style_NN/
        base = patient.parent.parent if patient.parent.name.lower() == "simulated" else patient.parent
        return child_dir(base / self.style / patient.name, f"style_{self.style_index:02d}")

    def _list_pairs(self) -> list[Pair]:
        wanted = select_split([], self._split, self.name)
        pairs: list[Pair] = []
        for patient in find_dirs(self.root, _is_patient):
            if wanted is not None and patient.name.lower() not in wanted:
                continue
            img_dir, dep_dir = self._image_dir(patient), child_dir(patient, *_DEPTH_DIRS)
            if img_dir is None:
                continue
            depths = {frame_number(p.name): p for _, p in sorted_files(dep_dir, _DEPTH_RX)}
            rgbs = [(frame_number(p.name), p) for _, p in sorted_files(img_dir, _IMAGE_RX)]
            pairs += self._pairs_by_index(rgbs, depths, patient,
                                          lambda i, rgb: dep_dir / f"<file numbered {i}>")
        return pairs
