"""C3VD (``c3vd``): Colonoscopy 3D Video Dataset, phantom colon video registered to CT models.

Bobrow et al., "Colonoscopy 3D video dataset with paired depth from 2D-3D registration", MedIA 90:102956, 2023;
project page durrlab.github.io/C3VD; code github.com/DurrLab/C3VD (``rendergt`` writes the ground truth).
```
<root>/<sequence, e.g. cecum_t1_a>/
    0000_color.png  0000_depth.tiff  (0000_normals.tiff 0000_occlusion.png 0000_flow.tiff ...)
    pose.txt        one line per frame: 16 comma-separated numbers, the 4x4 camera-to-world matrix (mm)
```
Frame numbers may be zero-padded or not (``0_color.png``); pairs match by the integer.

- Depth: uint16 TIFF, linear: ``depth_mm = value / 65535 * 100`` (project page: "depth ... 16-bit, 0–100 mm"),
  so 32768 -> 50.0008 mm. 0 = no surface (invalid). 65535 is the clip value (surface at or beyond 100 mm):
  also treated as invalid, since its true depth is unknown. An 8-bit file is refused.
- Pose: the DurrLab README documents the robot pose log as "homogenous pose in column-major form"; loaders
  differ on the rendered ``pose.txt``. We read each line as column-major when its last four numbers are
  ``tx ty tz 1`` and positions 3, 7, 11 are 0, and as row-major when it is the transpose; anything else is an
  error naming the line.
- Intrinsics: every sequence is filmed by the same scope (Olympus CF-HQ190L, a fisheye seeing ~128° across the
  1350×1080 frame's width). The sequence folders carry no calibration file, so frames of that aspect ratio get
  ``C3VD_CAMERA`` (rescaled to their size): the OpenCV-fisheye fit of the scope that public C3VD code uses (fitted
  to the data set's released ``cfhq190l_10x10mm_checkerboard_images``), so that ``surgical-depth evaluate``
  corrects predictions to the scope's lens (``SurgicalDepthLib.lens``; ``--no-lens-correction`` for the raw
  output). The data set's own calibration is OCamCalib (``cfhq190l_omnidirectional_params``): give its file as
  ``intrinsics=`` / ``--intrinsics`` to use it instead (``Intrinsics`` model ``ocam``). Other aspect ratios: None.
- ``split``: sequence-name prefixes, e.g. ``"cecum"`` or ``"cecum_t1_a,trans_t2_b"``.
- Default evaluation range 1e-3 .. 100 mm (the encoding's range).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from SurgicalDepthLib.camera import Intrinsics

from ._base import DatasetError, DepthDataset, Pair, find_dirs, read_raw, read_text, select_split, sorted_files

_RGB_RX = re.compile(r"(\d+)_color\.png", re.IGNORECASE)
_DEPTH_RX = re.compile(r"(\d+)_depth\.tiff?", re.IGNORECASE)
C3VD_MAX_MM = 100.0
C3VD_CAMERA = Intrinsics(767.3861511125845, 767.5058656118406, 679.054265997005, 543.646891684636, 1350, 1080,
                         {"model": "fisheye", "coeffs": [-0.18867185058223412, -0.003927337093919806,
                                                         0.030524814153620117, -0.012756926010904904]})


def _is_sequence(folder: Path) -> bool:
    try:
        return any(_RGB_RX.fullmatch(p.name) for p in folder.iterdir())
    except OSError:
        return False


def parse_c3vd_pose_line(values: np.ndarray, where: str) -> np.ndarray:
    """4x4 camera-to-world from the 16 numbers of one ``pose.txt`` line (column- or row-major, see module)."""
    if values.size != 16:
        raise DatasetError(f"{where}: expected 16 numbers (a 4x4 matrix), got {values.size}")
    col = values.reshape(4, 4, order="F")
    row = values.reshape(4, 4)
    for m in (col, row):
        if np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
            return m.astype(np.float64)
    raise DatasetError(f"{where}: not a homogeneous 4x4 matrix in column- or row-major order: {values.tolist()}")


class C3VD(DepthDataset):
    """C3VD registered video frames with rendered depth; see the module docstring."""

    name = "c3vd"
    depth_unit = "mm"
    min_depth = 1e-3
    max_depth = C3VD_MAX_MM

    def __init__(self, root, split=None, **options) -> None:
        self._poses: dict[Path, np.ndarray | None] = {}
        super().__init__(root, split, **options)

    def layout_hint(self) -> str:
        return "expected sequence folders holding NNNN_color.png + NNNN_depth.tiff"

    def _list_pairs(self) -> list[Pair]:
        wanted = select_split([], self.split, self.name)
        pairs: list[Pair] = []
        for seq in find_dirs(self.root, _is_sequence):
            if wanted is not None and not any(seq.name.lower().startswith(w) for w in wanted):
                continue
            depths = {int(m.group(1)): p for m, p in sorted_files(seq, _DEPTH_RX)}
            rgbs = sorted(((int(m.group(1)), p) for m, p in sorted_files(seq, _RGB_RX)), key=lambda ip: ip[0])
            pairs += self._pairs_by_index(rgbs, depths, seq,
                                          lambda i, rgb: rgb.with_name(rgb.name.replace("_color.png", "_depth.tiff")))
        return pairs

    def decode_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = read_raw(path)
        if raw.ndim == 3:  # some exports repeat the grey value in 3 channels: take the first
            raw = raw[..., 0]
        if raw.dtype != np.uint16 or raw.ndim != 2:
            bits = f"{raw.dtype.itemsize * 8}-bit " if raw.dtype.kind in "ui" else ""
            raise DatasetError(f"{path}: C3VD depth must be a 16-bit (uint16) TIFF, got {bits}{raw.dtype} "
                               f"with shape {raw.shape}")
        valid = (raw != 0) & (raw != 65535)
        return raw.astype(np.float32) * np.float32(C3VD_MAX_MM / 65535.0), valid

    def intrinsics_for(self, pair: Pair, width: int, height: int) -> Intrinsics | None:
        try:
            return C3VD_CAMERA.fitted(width, height)
        except ValueError:  # frames cropped to another aspect ratio: the camera is not known
            return None

    def pose_for(self, pair: Pair) -> np.ndarray | None:
        if pair.sequence not in self._poses:
            self._poses[pair.sequence] = _read_poses(pair.sequence / "pose.txt")
        poses = self._poses[pair.sequence]
        if poses is None or pair.index is None or pair.index >= len(poses):
            return None
        return poses[pair.index].copy()


def _read_poses(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    out = []
    for n, line in enumerate(read_text(path, "C3VD pose file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = np.asarray([float(t) for t in re.split(r"[,\s]+", line.strip()) if t])
        except ValueError as exc:
            raise DatasetError(f"{path}: line {n} is not numeric ({exc})") from exc
        out.append(parse_c3vd_pose_line(values, f"{path} line {n}"))
    return np.stack(out) if out else None
