"""EndoSLAM synthetic part (``endoslam``): Unity capsule-endoscopy renders with per-pixel depth images.

Ozyoruk et al., "EndoSLAM dataset and an unsupervised monocular visual odometry and depth estimation approach for
endoscopic videos", MedIA 71:102058, 2021; data: Mendeley Data cd2rtzm23r; code github.com/CapsuleEndoscope/EndoSLAM.
```
<root>/UnityCam/Calibration/cam.txt                     9 numbers, row-major 3x3 K (320 x 320 images)
<root>/UnityCam/{Colon,Small Intestine,Stomach}/Frames/image_NNNN.png
<root>/UnityCam/{Colon,Small Intestine,Stomach}/Pixelwise Depths/aov_image_NNNN.png
```
Folders named ``frames/`` + ``depth/`` (the layout of the shared sample) are accepted too, and so is one extra
nesting level (``Frames/Frames/``) that some archive extractions produce. The ex-vivo camera parts
(``Cameras/HighCam`` ...) have no depth and are not listed.

Depth encoding: **not documented** by the EndoSLAM authors. Checked on the shared sample (README of
``samples/endoslam``): 8-bit RGBA with R = G = B, small integers (1 .. ~51), **larger = nearer** (correlates
with image brightness), i.e. an inverse-depth-like quantity with no known scale. Some third-party loaders read it
as centimetres of depth; that contradicts the observed direction, so we do not. We return:

- ``depth`` = ``1 / value`` (float32), ``depth_unit = "relative"``:
  a relative depth, larger = farther, meaningful only up to scale (use median or scale-shift alignment);
- ``disparity`` = ``value`` as float32 (extra item key), the stored disparity-like value itself, for
  evaluation in inverse-depth space (the recommended use);
- ``valid`` = ``value > 0``.

Splits follow the paper's per-organ protocol: ``split="stomach"``, ``"small_intestine"`` (or
``"smallintestine"``, ``"small intestine"``), ``"colon"``, comma-separated or a list; ``organ=`` is a synonym.
The organ is taken from the folder names; a folder without an organ name matches no organ split.
Intrinsics: ``Calibration/cam.txt`` (or ``camera_intrinsics.txt``) found in the sequence folder or up to three
folders above it; else None. Poses: None (Unity CSV poses use a left-handed frame whose exact convention is not
documented).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from SurgicalDepthLib.camera import Intrinsics

from ._base import DatasetError, DepthDataset, Pair, child_dir, find_dirs, read_raw, select_split, sorted_files

logger = logging.getLogger(__name__)

ORGANS = {"stomach": "Stomach", "smallintestine": "Small Intestine", "colon": "Colon"}
_RGB_RX = re.compile(r"image_(\d+)\.(png|jpg|jpeg)", re.IGNORECASE)
_DEPTH_RX = re.compile(r"aov_image_(\d+)\.png", re.IGNORECASE)
_FRAME_DIRS = ("Frames", "Frames_jpg")
_DEPTH_DIRS = ("Pixelwise Depths", "PixelwiseDepths", "Depth", "Depths")


def _organ_key(text: str) -> str:
    return re.sub(r"[\s_\-]", "", text).lower()


def _content_dir(folder: Path | None, names: tuple[str, ...]) -> Path | None:
    """``folder``, or its same-named child when an archive was extracted one level too deep."""
    if folder is None:
        return None
    nested = child_dir(folder, *names)
    return nested if nested is not None else folder


class EndoSLAM(DepthDataset):
    """EndoSLAM UnityCam (synthetic) RGB + relative depth; see the module docstring."""

    name = "endoslam"
    depth_unit = "relative"
    min_depth = None
    max_depth = None

    def __init__(self, root, split=None, *, organ=None, **options) -> None:
        if organ is not None and split is not None:
            raise ValueError(f"endoslam: give split or organ, not both (got split={split!r}, organ={organ!r})")
        split = organ if organ is not None else split
        wanted = select_split(list(ORGANS), split, "endoslam", _organ_key)
        if wanted is not None and not wanted <= set(ORGANS):
            raise ValueError(f"endoslam: unknown organ split {split!r}; expected one of "
                             f"{sorted(ORGANS.values())} (case, spaces and underscores ignored)")
        self._organs = wanted
        self._intr_cache: dict[Path, Intrinsics | None] = {}
        super().__init__(root, split, **options)

    def layout_hint(self) -> str:
        return ("expected UnityCam/<Organ>/Frames/image_NNNN.png + 'Pixelwise Depths'/aov_image_NNNN.png "
                "(or frames/ + depth/)")

    @staticmethod
    def _is_sequence(folder: Path) -> bool:
        return child_dir(folder, *_FRAME_DIRS) is not None and child_dir(folder, *_DEPTH_DIRS) is not None

    def organ_of(self, seq: Path) -> str | None:
        """The organ key ("stomach", "smallintestine", "colon") named by the sequence folder or its parents."""
        for part in (seq, *seq.parents):
            key = _organ_key(part.name)
            if key in ORGANS:
                return key
        return None

    def _list_pairs(self) -> list[Pair]:
        pairs: list[Pair] = []
        for seq in find_dirs(self.root, self._is_sequence):
            if self._organs is not None and self.organ_of(seq) not in self._organs:
                continue
            frames = _content_dir(child_dir(seq, *_FRAME_DIRS), _FRAME_DIRS)
            depth_dir = _content_dir(child_dir(seq, *_DEPTH_DIRS), _DEPTH_DIRS)
            depths = {int(m.group(1)): p for m, p in sorted_files(depth_dir, _DEPTH_RX)}
            rgbs = [(int(m.group(1)), p) for m, p in sorted_files(frames, _RGB_RX)]
            pairs += self._pairs_by_index(rgbs, depths, seq,
                                          lambda i, rgb: depth_dir / f"aov_{rgb.stem}.png")
        return pairs

    def decode_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        value = self._read_value(path)
        valid = value > 0
        depth = np.zeros(value.shape, np.float32)
        np.divide(1.0, value, out=depth, where=valid)
        return depth, valid

    @staticmethod
    def _read_value(path: Path) -> np.ndarray:
        raw = read_raw(path)
        if raw.dtype != np.uint8:
            raise DatasetError(f"{path}: EndoSLAM depth must be an 8-bit PNG, got {raw.dtype}")
        # R = G = B (alpha differs by up to 1 and is ignored): channel 0 of the unchanged read.
        return (raw[..., 0] if raw.ndim == 3 else raw).astype(np.float32)

    def load(self, pair: Pair) -> dict:
        sample = super().load(pair)
        # the black corners outside the capsule's octagonal field of view carry depth values too: not valid
        sample["valid"] = sample["valid"] & ~outside_field_of_view(sample["image"])
        sample["depth"] = np.where(sample["valid"], sample["depth"], 0).astype(np.float32)
        sample["disparity"] = np.where(sample["valid"], self._read_value(pair.depth), 0).astype(np.float32)
        return sample

    def intrinsics_for(self, pair: Pair, width: int, height: int) -> Intrinsics | None:
        if pair.sequence not in self._intr_cache:
            self._intr_cache[pair.sequence] = _find_calibration(pair.sequence)
        intr = self._intr_cache[pair.sequence]
        if intr is None:
            return None
        return intr if intr.size == (width, height) else intr.scaled(width, height)


def _find_calibration(seq: Path) -> Intrinsics | None:
    for folder in (seq, *list(seq.parents)[:3]):
        for rel in ("cam.txt", "Calibration/cam.txt", "camera_intrinsics.txt"):
            f = folder / rel
            if f.is_file():
                # EndoSLAM's cam.txt holds K for the 320 x 320 UnityCam renders.
                return Intrinsics.from_file(f, width=320, height=320)
    return None


def outside_field_of_view(rgb: np.ndarray, threshold: int = 5) -> np.ndarray:
    """bool ``[H, W]``: the near-black region connected to the image border (the masked corners of an endoscope
    image). Dark tissue inside the field of view (the far lumen) does not touch the border and is kept."""
    import cv2

    dark = (np.asarray(rgb).max(axis=2) <= threshold).astype(np.uint8)
    _, labels = cv2.connectedComponents(dark, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    return np.isin(labels, border)
