"""SCARED (``scared``): MICCAI 2019 EndoVis Stereo Correspondence And Reconstruction of Endoscopic Data.

Allan et al., "Stereo correspondence and reconstruction of endoscopic data challenge", arXiv:2101.01133;
data endovissub2019-scared.grand-challenge.org (da Vinci Xi, porcine cadavers, structured-light ground truth).
```
<root>/dataset_1/keyframe_1/Left_Image.png          1280 x 1024 RGB, left camera, not rectified
<root>/dataset_1/keyframe_1/left_depth_map.tiff     float32 [H, W, 3]: X, Y, Z (mm) of the surface point seen
                                                    by each left pixel, in the left camera frame; 0 = no data
<root>/dataset_1/keyframe_1/endoscope_calibration.yaml   OpenCV FileStorage: M1, D1 (left), M2, D2, R, T
```
- Depth = the Z channel (index 2) of ``left_depth_map.tiff`` (as read by the community SCARED toolkit's
  ``load_depthmap_xyz``, which also marks 0 as missing). Read with SimpleITK, not OpenCV: ``cv2.imread`` returns
  the channels reversed (Z first), a common source of confusion. Valid where Z > 0 and finite. A single-channel float
  TIFF (a depth map already) is accepted as Z directly.
- Intrinsics: ``M1`` with OpenCV distortion ``D1`` from ``endoscope_calibration.yaml`` in the keyframe folder
  (the keyframe images are not rectified), else None. ``M1`` is the camera of the recorded 1280 x 1024 frames:
  keyframes resized to another size of that aspect ratio (e.g. the 320 x 256 copies of monodepth2-style
  pipelines) get it rescaled; another aspect ratio (a crop) gets None.
- ``split``: ``"dataset_1"``, ``"dataset_1/keyframe_2"``, ``"1"`` (= dataset_1), comma-separated or a list.
  The interpolated per-frame ground truth in ``data/scene_points*.tiff`` is not read by this loader.
- Default evaluation range 1e-3 .. 150 mm (the cap of the monodepth2-style SCARED protocol, e.g. AF-SfMLearner).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.text_files import read_text_file

from ._base import DatasetError, DepthDataset, Pair, find_dirs, read_tiff, select_split

logger = logging.getLogger(__name__)

SCARED_MAX_MM = 150.0
#: Size of the da Vinci Xi frames (each eye) that ``endoscope_calibration.yaml`` describes.
SCARED_SIZE = (1280, 1024)


def _find_file(folder: Path, name: str) -> Path | None:
    for p in sorted(folder.iterdir()):
        if p.name.lower() == name.lower() and p.is_file():
            return p
    return None


def _is_keyframe(folder: Path) -> bool:
    return folder.name.lower().startswith("keyframe") and _find_file(folder, "Left_Image.png") is not None


def _split_key(text: str) -> str:
    text = text.strip().strip("/").lower()
    return f"dataset_{text}" if text.isdigit() else text


class SCARED(DepthDataset):
    """SCARED keyframes (left image + structured-light depth); see the module docstring."""

    name = "scared"
    depth_unit = "mm"
    min_depth = 1e-3
    max_depth = SCARED_MAX_MM

    def __init__(self, root, split=None, **options) -> None:
        self._calib: dict[Path, Intrinsics | None] = {}
        super().__init__(root, split, **options)

    def layout_hint(self) -> str:
        return "expected dataset_N/keyframe_M/Left_Image.png + left_depth_map.tiff"

    def _list_pairs(self) -> list[Pair]:
        wanted = select_split([], self.split, self.name, _split_key)
        pairs: list[Pair] = []
        for kf in find_dirs(self.root, _is_keyframe):
            ds = kf.parent.name.lower()
            if wanted is not None and ds not in wanted and f"{ds}/{kf.name.lower()}" not in wanted:
                continue
            rgb = _find_file(kf, "Left_Image.png")
            depth = _find_file(kf, "left_depth_map.tiff")
            if depth is None:
                self._missing(rgb, kf / "left_depth_map.tiff")
                continue
            pairs.append(Pair(rgb, depth, kf))
        return pairs

    def decode_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = read_tiff(path)
        if raw.ndim == 3 and raw.shape[-1] == 3:
            z = raw[..., 2]
        elif raw.ndim == 3 and raw.shape[0] == 3:  # planar TIFF
            z = raw[2]
        elif raw.ndim == 2:
            z = raw
        else:
            raise DatasetError(f"{path}: SCARED depth map has shape {raw.shape}, expected [H, W, 3] (X, Y, Z)")
        if raw.dtype.kind != "f":
            raise DatasetError(f"{path}: SCARED depth map has dtype {raw.dtype}, expected float32 (mm)")
        z = z.astype(np.float32)
        valid = np.isfinite(z) & (z > 0)
        return np.where(valid, z, 0).astype(np.float32), valid

    def intrinsics_for(self, pair: Pair, width: int, height: int) -> Intrinsics | None:
        if pair.sequence not in self._calib:
            self._calib[pair.sequence] = _read_calibration(pair.sequence, width, height)
        return self._calib[pair.sequence]


def _read_calibration(keyframe: Path, width: int, height: int) -> Intrinsics | None:
    import cv2  # lazy: heavy import

    path = _find_file(keyframe, "endoscope_calibration.yaml")
    if path is None:
        return None
    # parsed from its text: cv2.FileStorage cannot open a non-ASCII path on Windows ("expected 'M1', got nothing")
    text = read_text_file(path, "SCARED calibration")
    try:
        fs = cv2.FileStorage(text, cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
    except (cv2.error, SystemError) as exc:  # a parse error: cv2.error, or SystemError from the binding
        raise DatasetError(f"{path}: not valid OpenCV YAML ({type(exc).__name__})") from exc
    try:
        m1, d1 = fs.getNode("M1").mat(), fs.getNode("D1").mat()
    finally:
        fs.release()
    if m1 is None or m1.shape != (3, 3):
        raise DatasetError(f"{path}: expected a 3x3 matrix 'M1' (left camera), got "
                           f"{'nothing' if m1 is None else m1.shape}")
    dist = None
    if d1 is not None and np.any(d1):
        coeffs = np.asarray(d1, dtype=np.float64).ravel().tolist()
        dist = {"model": "opencv", "coeffs": coeffs}
    try:
        return Intrinsics.from_matrix(m1, *SCARED_SIZE, dist).fitted(width, height)
    except ValueError:  # cropped to another aspect ratio: where the principal point lies is not known
        logger.warning("%s: the calibration is for %dx%d frames, the keyframe is %dx%d (another aspect ratio): "
                       "no intrinsics", path, *SCARED_SIZE, width, height)
        return None
