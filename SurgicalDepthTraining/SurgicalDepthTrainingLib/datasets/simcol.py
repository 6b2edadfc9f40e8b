"""UCL Unity colonoscopy renders: SimCol3D (``simcol3d``) and the Rau et al. 2019 colon depth set (``colondepth``).

Both come from the same Unity pipeline (A. Rau, UCL) and store pairs ``FrameBuffer_NNNN.png`` (RGB) /
``Depth_NNNN.png`` (greyscale depth normalised so that 1.0 = 20 cm) in one folder per trajectory.

SimCol3D (Rau et al., "SimCol3D — 3D reconstruction during colonoscopy challenge", MedIA 96, 2024; data README
at the UCL RDR record 24077763; organisers' code github.com/anitarau/simcol):
```
<root>/misc/{train,test}_file.txt            official challenge splits (when present)
<root>/SyntheticColon_I/Frames_S1/FrameBuffer_0000.png  Depth_0000.png ...
<root>/SyntheticColon_I/SavedPosition_S1.txt          tx ty tz per frame (cm, Unity left-handed)
<root>/SyntheticColon_I/SavedRotationQuaternion_S1.txt  qx qy qz qw per frame
```
- RGB: 16-bit RGBA PNG whose values are 8-bit << 8 (checked on the shared samples): read as ``value >> 8``.
- Depth: uint16 PNG, ``depth_mm = value / 65280 * 200`` (the organisers' ``value / 256 / 255 * 20`` cm in
  ``data_helpers/visualize_3D_data.py`` and ``evaluation/eval_synthetic_depth.py``; /65535 would be 0.39 % off);
  0 = invalid. An 8-bit depth file is refused.
- Intrinsics (475 × 475): the organisers' script builds ``K = [[227.6, 0, 227.6], [0, 237.5, 237.5]]``, which
  mixes up fy and cx; we use the geometrically consistent reading **fx = fy = 227.60416, cx = cy = 237.5**
  (square pixels, principal point at the image centre), as most users of the data do. Pass ``intrinsics=`` to
  use another reading.
- Pose: ``visualize_3D_data.py`` turns a line pair (t in cm, quaternion xyzw) into ``TM @ [R | t] @ TM`` with
  ``TM = diag(1, -1, 1, 1)`` (left- to right-handed) and uses it as camera-to-world; we do the same, t in mm.
- Default evaluation range 1e-3 .. 200 mm (the encoding's top; the official evaluation clips to [0, 20] cm).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from SurgicalDepthLib.camera import Intrinsics

from ._base import DatasetError, DepthDataset, Pair, find_dirs, read_raw, read_text, select_split, sorted_files

logger = logging.getLogger(__name__)

_RGB_RX = re.compile(r"FrameBuffer_(\d+)\.png", re.IGNORECASE)
_DEPTH_RX = re.compile(r"Depth_(\d+)\.png", re.IGNORECASE)
#: uint16 value of depth 1.0 (= 200 mm): Unity writes 8-bit values scaled by 256, so 255 * 256 = 65280.
SIMCOL_FULL_SCALE = 65280
SIMCOL_MAX_MM = 200.0
SIMCOL_FX = 227.60416
SIMCOL_CX = 237.5
#: Test trajectories of the SimCol3D challenge (Rau et al. 2024: S5/S10/S15 of Colon I, B5/B10/B15 of Colon II and
#: all of Colon III), used only when the dataset's own misc/test_file.txt is absent.
SIMCOL_TEST = ("Frames_S5", "Frames_S10", "Frames_S15", "Frames_B5", "Frames_B10", "Frames_B15",
               "Frames_O1", "Frames_O2", "Frames_O3")


def _has_framebuffers(folder: Path) -> bool:
    try:
        return any(_RGB_RX.fullmatch(p.name) for p in folder.iterdir())
    except OSError:
        return False


class _UnityColon(DepthDataset):
    """Common listing of ``FrameBuffer_N.png`` / ``Depth_N.png`` trajectory folders."""

    def layout_hint(self) -> str:
        return "expected folders holding FrameBuffer_NNNN.png + Depth_NNNN.png pairs"

    def _sequences(self) -> list[Path]:
        return find_dirs(self.root, _has_framebuffers)

    def _keep(self, seq: Path) -> bool:
        return True

    def _list_pairs(self) -> list[Pair]:
        pairs: list[Pair] = []
        for seq in self._sequences():
            if not self._keep(seq):
                continue
            depths = {int(m.group(1)): p for m, p in sorted_files(seq, _DEPTH_RX)}
            rgbs = [(int(m.group(1)), p) for m, p in sorted_files(seq, _RGB_RX)]
            pairs += self._pairs_by_index(rgbs, depths, seq,
                                          lambda i, rgb: rgb.with_name(f"Depth_{rgb.stem.split('_')[-1]}.png"))
        return pairs


class SimCol3D(_UnityColon):
    """SimCol3D synthetic colonoscopy (see the module docstring for layout, encoding and camera).

    ``split``: ``"train"``/``"test"`` (``misc/<split>_file.txt`` under the root when present, else the
    published test trajectories ``SIMCOL_TEST``), or trajectory/scene names such as ``"Frames_S5"``, ``"S5"``,
    ``"SyntheticColon_II"`` (comma-separated or a list).
    """

    name = "simcol3d"
    depth_unit = "mm"
    min_depth = 1e-3
    max_depth = SIMCOL_MAX_MM

    def __init__(self, root, split=None, **options) -> None:
        self._pose_cache: dict[Path, np.ndarray | None] = {}
        super().__init__(root, split, **options)

    def _split_sequences(self) -> tuple[str, set[str]] | None:
        if self.split is None:
            return None
        if isinstance(self.split, str) and self.split.lower() in ("train", "test", "val"):
            for base in (self.root, self.root.parent, self.root.parent.parent):
                f = base / "misc" / f"{self.split.lower()}_file.txt"
                if f.is_file():
                    names = {line.strip().rstrip("/").split("/")[-1].lower()
                             for line in read_text(f, "SimCol3D split file").splitlines() if line.strip()}
                    return "in", names
            if self.split.lower() == "val":
                raise FileNotFoundError(f"simcol3d: split 'val' needs misc/val_file.txt under {self.root}")
            logger.info("simcol3d: no misc/%s_file.txt under %s; using the published test trajectories %s",
                        self.split, self.root, SIMCOL_TEST)
            return ("in" if self.split.lower() == "test" else "out"), {s.lower() for s in SIMCOL_TEST}
        wanted = select_split([], self.split, self.name)
        return "in", {w if w.startswith(("frames_", "syntheticcolon")) else f"frames_{w}" for w in wanted}

    def _list_pairs(self) -> list[Pair]:
        self._split_rule = self._split_sequences()
        return super()._list_pairs()

    def _keep(self, seq: Path) -> bool:
        rule = self._split_rule
        if rule is None:
            return True
        mode, names = rule
        hit = seq.name.lower() in names or seq.parent.name.lower() in names
        return hit if mode == "in" else not hit

    def decode_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = read_raw(path)
        if raw.dtype != np.uint16 or raw.ndim != 2:
            raise DatasetError(f"{path}: SimCol3D depth must be a single-channel 16-bit PNG, got {raw.dtype} "
                               f"with shape {raw.shape}")
        return raw.astype(np.float32) * np.float32(SIMCOL_MAX_MM / SIMCOL_FULL_SCALE), raw > 0

    def intrinsics_for(self, pair: Pair, width: int, height: int) -> Intrinsics:
        base = Intrinsics(SIMCOL_FX, SIMCOL_FX, SIMCOL_CX, SIMCOL_CX, 475, 475)
        return base if (width, height) == (475, 475) else base.scaled(width, height)

    def pose_for(self, pair: Pair) -> np.ndarray | None:
        poses = self._pose_cache.get(pair.sequence, False)
        if poses is False:
            poses = self._pose_cache[pair.sequence] = _read_simcol_poses(pair.sequence)
        if poses is None or pair.index is None or pair.index >= len(poses):
            return None
        return poses[pair.index].copy()


def _read_simcol_poses(seq: Path) -> np.ndarray | None:
    """[N, 4, 4] camera-to-world (mm) from ``SavedPosition_<id>.txt`` + ``SavedRotationQuaternion_<id>.txt``
    beside the ``Frames_<id>`` folder, or None when absent."""
    from scipy.spatial.transform import Rotation  # lazy: heavy import

    ident = seq.name[len("Frames_"):] if seq.name.lower().startswith("frames_") else None
    if ident is None:
        return None
    pos_f = seq.parent / f"SavedPosition_{ident}.txt"
    rot_f = seq.parent / f"SavedRotationQuaternion_{ident}.txt"
    if not (pos_f.is_file() and rot_f.is_file()):
        return None
    try:
        t = np.loadtxt(pos_f, ndmin=2)
        q = np.loadtxt(rot_f, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"{pos_f} / {rot_f}: unreadable pose file ({exc})") from exc
    if t.shape[1] != 3 or q.shape[1] != 4 or len(t) != len(q):
        raise DatasetError(f"{pos_f} / {rot_f}: expected N x 3 positions and N x 4 quaternions, "
                           f"got {t.shape} and {q.shape}")
    tm = np.diag([1.0, -1.0, 1.0, 1.0])
    poses = np.repeat(np.eye(4)[None], len(t), axis=0)
    poses[:, :3, :3] = Rotation.from_quat(q).as_matrix()
    poses[:, :3, 3] = t * 10.0  # cm -> mm
    return tm @ poses @ tm


class ColonDepth(_UnityColon):
    """Rau et al. 2019 synthetic colonoscopy depth set ("Implicit domain adaptation with conditional generative
    adversarial networks for depth prediction in endoscopy", IJCARS 14:1167; data: cmic.cs.ucl.ac.uk/
    ColonoscopyDepth): Unity renders of a CT colon with textures T1–T3 and several lightings, one folder per
    texture/lighting/trajectory (e.g. ``T1_L1_1_resized/``) holding ``FrameBuffer_NNNN.png`` / ``Depth_NNNN.png``.

    Encoding: **unclear in the published description** (the paper reports errors in cm but the download page
    does not state the depth-image scale). We assume the convention of the same authors' later SimCol3D release
    (same Unity pipeline): depth normalised to [0, 1] with 1.0 = 20 cm. We read an 8-bit file as
    ``value / 255 * 200`` mm and a 16-bit file as SimCol3D's ``value / 65280 * 200`` mm. 0 = invalid. Change
    the scale with ``full_scale_mm=``. Intrinsics are not published: None (pass ``intrinsics=``).
    ``split``: folder-name prefixes, e.g. ``"T1"`` or ``"T1,T2"`` (texture subsets; a folder named with a
    leading ``C_``, as in copies of the set, ``C_T1_L1_1_resized``, matches ``"T1"`` too).
    """

    name = "colondepth"
    depth_unit = "mm"
    min_depth = 1e-3
    max_depth = SIMCOL_MAX_MM

    def __init__(self, root, split=None, *, full_scale_mm: float = SIMCOL_MAX_MM, **options) -> None:
        if not full_scale_mm > 0:
            raise ValueError(f"colondepth: full_scale_mm must be > 0, got {full_scale_mm!r}")
        self.full_scale_mm = float(full_scale_mm)
        super().__init__(root, split, **options)

    def _keep(self, seq: Path) -> bool:
        wanted = select_split([], self.split, self.name)
        name = seq.name.lower()
        name = name[2:] if name.startswith("c_") else name  # copies named C_T1_L1_1_resized (C for colon)
        return wanted is None or any(name.startswith(w) or seq.name.lower().startswith(w) for w in wanted)

    def decode_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = read_raw(path)
        if raw.ndim == 3:  # greyscale saved as RGB(A): channels are equal, take the first
            raw = raw[..., 0]
        if raw.dtype == np.uint8:
            scale = self.full_scale_mm / 255.0
        elif raw.dtype == np.uint16:
            scale = self.full_scale_mm / SIMCOL_FULL_SCALE
        else:
            raise DatasetError(f"{path}: colondepth depth must be an 8- or 16-bit PNG, got {raw.dtype}")
        return raw.astype(np.float32) * np.float32(scale), raw > 0
