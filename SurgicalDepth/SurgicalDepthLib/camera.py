"""Camera intrinsics (OpenCV convention: pixel centres at integer coordinates, x right, y down, z forward).

``Intrinsics`` holds a pinhole camera plus optional lens distortion in one of two OpenCV models:

- ``{"model": "opencv", "coeffs": [k1, k2, p1, p2[, k3[, k4, k5, k6[, s1, s2, s3, s4[, tx, ty]]]]]}`` —
  radial/tangential (``cv2.projectPoints``), 4, 5, 8, 12 or 14 coefficients;
- ``{"model": "fisheye", "coeffs": [k1, k2, k3, k4]}`` — equidistant fisheye (``cv2.fisheye.projectPoints``).

Distortion coefficients act on normalised coordinates, so they do not change when the image is resized.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DISTORTION_MODELS = ("opencv", "fisheye")
_OPENCV_COEFF_COUNTS = (4, 5, 8, 12, 14)
#: Horizontal field of view assumed when no intrinsics are known (typical forward-viewing endoscope optics).
DEFAULT_FOV_DEG = 70.0
#: allowed focal lengths, as multiples of the longer image side (see ``Intrinsics._check_physical``)
FOCAL_RANGE = (0.05, 1000.0)
# Fixed-point iteration of cv2.undistortPoints: the default (5 iterations) leaves ~1e-4 normalised error on
# strong barrel distortion; iterate to machine precision instead.
_UNDISTORT_CRITERIA = (3, 100, 1e-14)  # cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS


def _check_distortion(distortion: Any) -> dict | None:
    """Validate and normalise a distortion dict (``None``, or model + coefficient list)."""
    if distortion is None:
        return None
    if not isinstance(distortion, dict) or set(distortion) != {"model", "coeffs"}:
        raise ValueError(f"Intrinsics.distortion must be None or a dict with keys 'model' and 'coeffs', "
                         f"got {distortion!r}")
    model = distortion["model"]
    if model not in DISTORTION_MODELS:
        raise ValueError(f"Intrinsics.distortion['model'] must be one of {DISTORTION_MODELS}, got {model!r}")
    coeffs = [float(c) for c in np.asarray(distortion["coeffs"], dtype=np.float64).ravel()]
    if not all(math.isfinite(c) for c in coeffs):
        raise ValueError(f"Intrinsics.distortion['coeffs'] must be finite, got {coeffs}")
    expected = _OPENCV_COEFF_COUNTS if model == "opencv" else (4,)
    if len(coeffs) not in expected:
        raise ValueError(f"Intrinsics.distortion: model {model!r} takes {' or '.join(map(str, expected))} "
                         f"coefficients, got {len(coeffs)}")
    return {"model": model, "coeffs": coeffs}


@dataclass(frozen=True)
class Intrinsics:
    """Camera intrinsics in pixels for an image of ``width × height``.

    ``fx, fy``: focal lengths (px); ``cx, cy``: principal point (px, pixel-centre convention);
    ``distortion``: None, or ``{"model": "opencv"|"fisheye", "coeffs": [...]}`` (see the module docstring).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: dict | None = None

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)):
                raise ValueError(f"Intrinsics.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in ("fx", "fy"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Intrinsics.{name} must be > 0, got {getattr(self, name)!r}")
        if int(self.width) <= 0 or int(self.height) <= 0 or int(self.width) != self.width \
                or int(self.height) != self.height:
            raise ValueError(f"Intrinsics size must be positive integers, got {self.width}x{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "distortion", _check_distortion(self.distortion))
        self._check_physical()

    def _check_physical(self) -> None:
        """Focal lengths between :data:`FOCAL_RANGE` × the longer image side (a field of view of ~0.06° to ~180°;
        fisheye lenses included) and the principal point within the image widened by half its size on each side
        (cropped images): anything else is a unit or typing error that would put points at absurd or infinite
        coordinates."""
        side = max(self.width, self.height)
        lo, hi = FOCAL_RANGE
        for name in ("fx", "fy"):
            f = getattr(self, name)
            if not lo * side <= f <= hi * side:
                raise ValueError(f"Intrinsics.{name}={f:g} px is not a physical focal length for a "
                                 f"{self.width}x{self.height} image (expected {lo * side:g} to {hi * side:g} px)")
        for name, size in (("cx", self.width), ("cy", self.height)):
            c = getattr(self, name)
            if not -0.5 * size <= c <= 1.5 * size:
                raise ValueError(f"Intrinsics.{name}={c:g} px lies far outside the {self.width}x{self.height} "
                                 f"image (expected {-0.5 * size:g} to {1.5 * size:g} px)")

    # ------------------------------------------------------------------ derived values
    @property
    def K(self) -> np.ndarray:
        """The 3×3 camera matrix, float64."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def dist_coeffs(self) -> np.ndarray:
        """Distortion coefficients as a float64 vector (empty without distortion)."""
        return np.asarray(self.distortion["coeffs"] if self.distortion else [], dtype=np.float64)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.width, self.height

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """The same camera for an image resized to ``width × height`` (pixel-centre convention)."""
        sx, sy = width / self.width, height / self.height
        return dataclasses.replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=(self.cx + 0.5) * sx - 0.5,
                                   cy=(self.cy + 0.5) * sy - 0.5, width=int(width), height=int(height))

    def undistorted_rays(self) -> np.ndarray:
        """Unit-z ray directions of every pixel: float64 ``[H, W, 2]`` = (x/z, y/z); see :func:`pixel_rays`."""
        return pixel_rays(self)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Intrinsics":
        """From ``{fx, fy, cx, cy, width, height[, distortion]}`` or ``{"K": 3x3, "dist": [...], width, height}``
        (``dist`` may also be ``{"model", "coeffs"}``; a bare list is the OpenCV model)."""
        if "K" in data:
            K = np.asarray(data["K"], dtype=np.float64)
            if K.shape != (3, 3):
                raise ValueError(f"intrinsics 'K' must be 3x3, got shape {K.shape}")
            missing = [k for k in ("width", "height") if k not in data]
            if missing:
                raise ValueError(f"intrinsics with 'K' also need {missing}; got keys {sorted(data)}")
            dist = data.get("dist", data.get("distortion"))
            if dist is not None and not isinstance(dist, dict):
                dist = _opencv_or_none(dist)
            return cls.from_matrix(K, data["width"], data["height"], dist)
        missing = [k for k in ("fx", "fy", "cx", "cy", "width", "height") if k not in data]
        if missing:
            raise ValueError(f"intrinsics dict is missing {missing}; expected fx, fy, cx, cy, width, height "
                             f"[, distortion] or K, dist, width, height; got keys {sorted(data)}")
        return cls(**{k: data[k] for k in ("fx", "fy", "cx", "cy", "width", "height")},
                   distortion=data.get("distortion"))

    @classmethod
    def from_matrix(cls, K: np.ndarray, width: int, height: int, distortion: dict | None = None) -> "Intrinsics":
        """From a 3×3 camera matrix (skew must be 0, last row 0 0 1)."""
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"camera matrix K must be 3x3, got shape {K.shape}")
        if abs(K[0, 1]) > 1e-9 * abs(K[0, 0]) or not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
            raise ValueError(f"camera matrix K must be [[fx,0,cx],[0,fy,cy],[0,0,1]] (no skew), got {K.tolist()}")
        return cls(K[0, 0], K[1, 1], K[0, 2], K[1, 2], int(width), int(height), distortion)

    @classmethod
    def from_fov(cls, width: int, height: int, fov_deg: float | None = None) -> "Intrinsics":
        """Square-pixel pinhole with the principal point at the image centre and horizontal FOV ``fov_deg``.

        ``fov_deg=None`` means the real intrinsics are unknown: ``DEFAULT_FOV_DEG`` is used and a warning is
        logged, since metric geometry then holds only up to that guess.
        """
        if fov_deg is None:
            fov_deg = DEFAULT_FOV_DEG
            logger.warning("no camera intrinsics given: assuming a pinhole with %.0f° horizontal field of view "
                           "for %dx%d (3D shape is approximate; pass real intrinsics for metric geometry)",
                           fov_deg, width, height)
        if not 0 < fov_deg < 180:
            raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg!r}")
        f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
        return cls(f, f, (width - 1) / 2, (height - 1) / 2, int(width), int(height))

    @classmethod
    def from_file(cls, path: str | os.PathLike, width: int | None = None,
                  height: int | None = None) -> "Intrinsics":
        """Read intrinsics from a calibration file.

        Formats (by suffix):
        - ``.json``: ``{fx, fy, cx, cy, width, height[, distortion]}`` or ``{"K": 3x3, "dist": [...], width, height}``;
        - ``.yaml/.yml/.xml``: OpenCV ``FileStorage`` (``camera_matrix``, ``distortion_coefficients``,
          ``image_width``, ``image_height``; ``!!opencv-matrix`` or ROS-style ``{rows, cols, data}``);
          ``distortion_model: fisheye|equidistant`` selects the fisheye model;
        - anything else (``.txt``): 9 numbers of a 3×3 K (row-major, e.g. EndoSLAM ``fx,0,cx,0,fy,cy,0,0,1``)
          or 4 numbers ``fx fy cx cy``; the image size must then be given as ``width``/``height``.
        ``width``/``height``, when given for a file that states its own size, must agree with it.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"intrinsics file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"intrinsics file {path} is not valid JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise ValueError(f"intrinsics file {path} must hold a JSON object, got {type(data).__name__}")
            data = {**data, **{k: v for k, v in (("width", width), ("height", height)) if v is not None
                               and k not in data}}
            intr = cls.from_dict(data)
        elif suffix in (".yaml", ".yml", ".xml"):
            intr = _read_opencv_storage(path, width, height)
        else:
            intr = _read_text_matrix(path, width, height)
        _check_size(intr, width, height, path)
        return intr


def _opencv_or_none(coeffs: Any) -> dict | None:
    arr = np.asarray(coeffs, dtype=np.float64).ravel()
    if arr.size == 0 or not np.any(arr):
        return None
    return {"model": "opencv", "coeffs": arr.tolist()}


def _check_size(intr: Intrinsics, width: int | None, height: int | None, source: Any) -> None:
    if (width is not None and width != intr.width) or (height is not None and height != intr.height):
        raise ValueError(f"intrinsics from {source} are for {intr.width}x{intr.height}, "
                         f"but {width}x{height} was given")


def _read_opencv_storage(path: Path, width: int | None, height: int | None) -> Intrinsics:
    import cv2  # lazy: heavy import

    text = path.read_text()
    if path.suffix.lower() != ".xml" and not text.lstrip().startswith("%YAML"):
        text = "%YAML:1.0\n" + text  # ROS/plain YAML lacks the header FileStorage needs
    fs = cv2.FileStorage(text, cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
    try:
        def matrix(name: str) -> np.ndarray | None:
            node = fs.getNode(name)
            if node.empty():
                return None
            if node.isMap() and not node.getNode("data").empty():  # ROS camera_info style
                data = node.getNode("data")
                vals = [data.at(i).real() for i in range(data.size())]
                return np.asarray(vals, dtype=np.float64)
            mat = node.mat()
            if mat is not None:
                return np.asarray(mat, dtype=np.float64).ravel()
            if node.isSeq():
                return np.asarray([node.at(i).real() for i in range(node.size())], dtype=np.float64)
            return None

        def scalar(name: str) -> int | None:
            node = fs.getNode(name)
            return None if node.empty() else int(node.real())

        K = matrix("camera_matrix")
        if K is None:
            K = matrix("K")
        if K is None or K.size != 9:
            raise ValueError(f"intrinsics file {path}: expected a 3x3 'camera_matrix', got "
                             f"{'nothing' if K is None else f'{K.size} values'}")
        dist = matrix("distortion_coefficients")
        if dist is None:
            dist = matrix("D")
        model_node = fs.getNode("distortion_model")
        model = "" if model_node.empty() else model_node.string().lower()
        w = scalar("image_width") or width
        h = scalar("image_height") or height
    finally:
        fs.release()
    if w is None or h is None:
        raise ValueError(f"intrinsics file {path} has no image_width/image_height; pass width and height")
    distortion = None
    if dist is not None and np.any(dist):
        if model in ("fisheye", "equidistant"):
            distortion = {"model": "fisheye", "coeffs": dist.tolist()}
        else:
            distortion = {"model": "opencv", "coeffs": dist.tolist()}
    return Intrinsics.from_matrix(K.reshape(3, 3), w, h, distortion)


def _read_text_matrix(path: Path, width: int | None, height: int | None) -> Intrinsics:
    tokens = [t for t in re.split(r"[,\s;\[\]]+", path.read_text()) if t]
    try:
        values = np.asarray([float(t) for t in tokens], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"intrinsics file {path}: expected 9 numbers (3x3 K) or 4 (fx fy cx cy), "
                         f"found a non-number: {exc}") from exc
    if width is None or height is None:
        raise ValueError(f"intrinsics file {path} holds no image size; pass width and height")
    if values.size == 9:
        return Intrinsics.from_matrix(values.reshape(3, 3), width, height)
    if values.size == 4:
        return Intrinsics(*values.tolist(), width=width, height=height)
    raise ValueError(f"intrinsics file {path}: expected 9 numbers (3x3 K) or 4 (fx fy cx cy), got {values.size}")


def parse_intrinsics(text_or_path: str | os.PathLike | None, width: int, height: int) -> Intrinsics:
    """Intrinsics for a ``width × height`` image from a CLI value.

    ``text_or_path``: ``"fx,fy,cx,cy"`` (pixels of this image size), a calibration file (see
    :meth:`Intrinsics.from_file`), or None (→ :meth:`Intrinsics.from_fov` with a logged warning).
    A file calibrated at another resolution of the same aspect ratio (within 1%) is rescaled with
    :meth:`Intrinsics.scaled` (logged); a different aspect ratio is an error.
    """
    if text_or_path is None:
        return Intrinsics.from_fov(width, height)
    text = str(text_or_path)
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if len(parts) == 4 and not Path(text).exists():
        try:
            fx, fy, cx, cy = (float(p) for p in parts)
        except ValueError as exc:
            raise ValueError(f"intrinsics {text!r}: expected 'fx,fy,cx,cy' numbers or a file path") from exc
        return Intrinsics(fx, fy, cx, cy, width, height)
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"intrinsics {text!r} is neither 'fx,fy,cx,cy' nor an existing file")
    if path.suffix.lower() in (".json", ".yaml", ".yml", ".xml"):
        intr = Intrinsics.from_file(path) if _file_states_size(path) else Intrinsics.from_file(path, width, height)
    else:
        intr = Intrinsics.from_file(path, width, height)
    if intr.size == (width, height):
        return intr
    if abs(intr.width / intr.height - width / height) > 0.01 * width / height:
        raise ValueError(f"intrinsics file {path} is for {intr.width}x{intr.height}, which does not have the "
                         f"aspect ratio of the {width}x{height} images")
    logger.info("rescaling intrinsics from %dx%d (%s) to %dx%d", intr.width, intr.height, path, width, height)
    return intr.scaled(width, height)


def _file_states_size(path: Path) -> bool:
    text = path.read_text()
    return ("image_width" in text and "image_height" in text) or ('"width"' in text and '"height"' in text)


def pixel_rays(intrinsics: Intrinsics) -> np.ndarray:
    """Unit-z ray direction (x/z, y/z) of every pixel centre, float64 ``[H, W, 2]``.

    A 3D point of pixel (u, v) with depth z is ``z * (x, y, 1)``. Without distortion
    ``x = (u - cx) / fx, y = (v - cy) / fy``; with distortion the pixel is undistorted by
    ``cv2.undistortPoints`` (iterated to convergence) or ``cv2.fisheye.undistortPoints``.
    """
    W, H = intrinsics.width, intrinsics.height
    if intrinsics.distortion is None:
        rays = np.empty((H, W, 2), dtype=np.float64)
        rays[..., 0] = ((np.arange(W) - intrinsics.cx) / intrinsics.fx)[None, :]
        rays[..., 1] = ((np.arange(H) - intrinsics.cy) / intrinsics.fy)[:, None]
        return rays
    import cv2  # lazy: heavy import

    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    pix = np.stack([u, v], axis=-1).reshape(-1, 1, 2)
    K, D = intrinsics.K, intrinsics.dist_coeffs
    if intrinsics.distortion["model"] == "fisheye":
        und = cv2.fisheye.undistortPoints(pix, K, D, criteria=_UNDISTORT_CRITERIA)
    else:
        und = cv2.undistortPoints(pix, K, D, criteria=_UNDISTORT_CRITERIA)
    return und.reshape(H, W, 2).astype(np.float64, copy=False)


def distort_normalized(x: Any, y: Any, distortion: dict | None) -> tuple[Any, Any]:
    """Apply lens distortion to normalised coordinates (x/z, y/z); works on numpy arrays and torch tensors.

    OpenCV model (``cv2.projectPoints``): r² = x²+y²,
    x' = x·(1+k1r²+k2r⁴+k3r⁶)/(1+k4r²+k5r⁴+k6r⁶) + 2p1xy + p2(r²+2x²) + s1r² + s2r⁴, y' likewise
    (tilt coefficients τx, τy are not supported here). Fisheye (``cv2.fisheye``): θ = atan(r),
    θd = θ(1+k1θ²+k2θ⁴+k3θ⁶+k4θ⁸), (x', y') = (θd/r)·(x, y).
    """
    if distortion is None:
        return x, y
    c = list(distortion["coeffs"])
    r2 = x * x + y * y
    if distortion["model"] == "fisheye":
        k1, k2, k3, k4 = c
        r = r2 ** 0.5
        theta = np.arctan(r) if isinstance(r, np.ndarray) else r.atan()
        t2 = theta * theta
        theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        scale = theta_d / r
        scale = np.where(r > 1e-12, scale, 1.0) if isinstance(r, np.ndarray) else scale.where(r > 1e-12, 1.0)
        return x * scale, y * scale
    if len(c) == 14 and (c[12] or c[13]):
        raise ValueError("distort_normalized: tilted-sensor coefficients (tx, ty) are not supported")
    c = c + [0.0] * (12 - len(c[:12]))
    k1, k2, p1, p2, k3, k4, k5, k6, s1, s2, s3, s4 = c[:12]
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    r4 = r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) + s1 * r2 + s2 * r4
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y + s3 * r2 + s4 * r4
    return xd, yd
