"""Camera intrinsics (OpenCV convention: pixel centres at integer coordinates, x right, y down, z forward).

``Intrinsics`` holds a pinhole camera plus optional lens distortion in one of two OpenCV models:

- ``{"model": "opencv", "coeffs": [k1, k2, p1, p2[, k3[, k4, k5, k6[, s1, s2, s3, s4[, tx, ty]]]]]}`` —
  radial/tangential (``cv2.projectPoints``), 4, 5, 8, 12 or 14 coefficients;
- ``{"model": "fisheye", "coeffs": [k1, k2, k3, k4]}`` — equidistant fisheye (``cv2.fisheye.projectPoints``);
- ``{"model": "ocam", "coeffs": [c, d, e, a0, ..., aN]}`` — Scaramuzza's omnidirectional model (OCamCalib,
  :mod:`.ocam`), with ``fx = |a0|``, ``fy = c·|a0|`` and ``(cx, cy)`` its centre (column, row).

The OpenCV models' coefficients act on normalised coordinates, so they do not change when the image is resized; the
``ocam`` polynomial is in pixels and :meth:`Intrinsics.scaled` rescales it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fisheye import fisheye_angles, fisheye_limit_angle

logger = logging.getLogger(__name__)

DISTORTION_MODELS = ("opencv", "fisheye", "ocam")
_OPENCV_COEFF_COUNTS = (4, 5, 8, 12, 14)
#: Horizontal field of view assumed when no intrinsics are known (typical forward-viewing endoscope optics).
DEFAULT_FOV_DEG = 70.0
#: allowed focal lengths, as multiples of the longer image side (see ``Intrinsics._check_physical``)
FOCAL_RANGE = (0.05, 1000.0)
# Fixed-point iteration of cv2.undistortPoints: a starting estimate, polished by Newton's method where it has not
# converged (``_refined_opencv_rays``; the fisheye model's own: ``fisheye.fisheye_angles``).
_UNDISTORT_CRITERIA = (3, 10, 1e-14)  # cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS
_FISHEYE_CRITERIA = (3, 100, 1e-14)  # its Newton iteration converges in a few steps where it converges at all
#: an OpenCV-model ray is kept when it projects back within this many pixels of its pixel
_RAY_TOLERANCE_PX = 1e-6
#: Newton steps polishing OpenCV's inversion (quadratic convergence: a few suffice from its estimate)
_NEWTON_STEPS = 20


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
    try:
        coeffs = [float(c) for c in np.asarray(distortion["coeffs"], dtype=np.float64).ravel()]
    except (TypeError, ValueError):
        raise ValueError(f"Intrinsics.distortion['coeffs'] must be numbers, got {distortion['coeffs']!r}") from None
    if not all(math.isfinite(c) for c in coeffs):
        raise ValueError(f"Intrinsics.distortion['coeffs'] must be finite, got {coeffs}")
    expected = {"opencv": _OPENCV_COEFF_COUNTS, "fisheye": (4,), "ocam": tuple(range(4, 24))}[model]
    if len(coeffs) not in expected:
        raise ValueError(f"Intrinsics.distortion: model {model!r} takes {' or '.join(map(str, expected))} "
                         f"coefficients, got {len(coeffs)}")
    if model == "ocam" and not (coeffs[3] < 0 and coeffs[0] - coeffs[1] * coeffs[2] != 0):
        raise ValueError(f"Intrinsics.distortion: an 'ocam' model needs a0 < 0 and c - d·e != 0, got {coeffs[:4]}")
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
            if not isinstance(v, (int, float, np.number)) or isinstance(v, (bool, np.bool_)) \
                    or not math.isfinite(float(v)):
                raise ValueError(f"Intrinsics.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in ("fx", "fy"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Intrinsics.{name} must be > 0, got {getattr(self, name)!r}")
        if any(not isinstance(n, (int, float, np.number)) or isinstance(n, (bool, np.bool_))
               for n in (self.width, self.height)) or int(self.width) <= 0 or int(self.height) <= 0 \
                or int(self.width) != self.width or int(self.height) != self.height:
            raise ValueError(f"Intrinsics size must be positive integers, got {self.width}x{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "distortion", _check_distortion(self.distortion))
        if self.distortion is not None and self.distortion["model"] == "ocam":
            c, a0 = self.distortion["coeffs"][0], self.distortion["coeffs"][3]
            if not (math.isclose(self.fx, -a0, rel_tol=1e-6) and math.isclose(self.fy, abs(c * a0), rel_tol=1e-6)):
                raise ValueError(f"Intrinsics with an 'ocam' model need fx = |a0| = {-a0:g} and fy = |c·a0| = "
                                 f"{abs(c * a0):g}, got fx={self.fx:g}, fy={self.fy:g}")
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
        distortion = self.distortion
        if distortion is not None and distortion["model"] == "ocam":  # a radial polynomial: one scale for both axes
            if not math.isclose(sx, sy, rel_tol=0.01):
                raise ValueError(f"an 'ocam' camera scales only with its aspect ratio: {self.width}x{self.height} "
                                 f"-> {width}x{height}")
            from .ocam import scaled_ocam

            sy = sx
            distortion = {"model": "ocam", "coeffs": scaled_ocam(distortion["coeffs"], sx)}
        return dataclasses.replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=(self.cx + 0.5) * sx - 0.5,
                                   cy=(self.cy + 0.5) * sy - 0.5, width=width, height=height,
                                   distortion=distortion)

    def fitted(self, width: int, height: int) -> "Intrinsics":
        """These intrinsics for ``width × height`` frames: unchanged, or :meth:`scaled` when the aspect ratio agrees
        within 1 % (calibrated at another resolution); another aspect ratio is a ValueError."""
        if self.size == (width, height):
            return self
        if abs(self.width / self.height - width / height) > 0.01 * width / height:
            raise ValueError(f"intrinsics for {self.width}x{self.height} do not have the aspect ratio of the "
                             f"{width}x{height} frames")
        return self.scaled(width, height)

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
            try:
                K = np.asarray(data["K"], dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"intrinsics 'K' must be a 3x3 matrix of numbers, got {data['K']!r}") from None
            if K.shape != (3, 3):
                raise ValueError(f"intrinsics 'K' must be 3x3, got shape {K.shape}")
            missing = [k for k in ("width", "height") if k not in data]
            if missing:
                raise ValueError(f"intrinsics with 'K' also need {missing}; got keys {sorted(data)}")
            dist = data.get("dist", data.get("distortion"))
            if dist is not None and not isinstance(dist, dict):
                try:
                    dist = opencv_or_none(dist)
                except (TypeError, ValueError):
                    raise ValueError(f"intrinsics 'dist' must be a list of numbers, got {dist!r}") from None
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
        return cls(K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height, distortion)  # a fractional size is refused

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
        - ``.json``: ``{fx, fy, cx, cy, width, height[, distortion]}`` or ``{"K": 3x3, "dist": [...], width, height}``,
          or the fields below (``cv2.FileStorage``'s JSON, a ROS CameraInfo message);
        - ``.yaml/.yml/.xml``: OpenCV ``FileStorage`` (``camera_matrix``, ``distortion_coefficients``,
          ``image_width``, ``image_height``; ``!!opencv-matrix`` or ROS-style ``{rows, cols, data}``; a ROS
          CameraInfo message's ``K``/``k``, ``D``/``d``, ``width``, ``height``);
          ``distortion_model: fisheye|equidistant`` (ROS) or ``fisheye_model: 1`` (OpenCV's calibration sample)
          selects the fisheye model (kept with all-zero coefficients: an equidistant lens), another ROS model than
          ``plumb_bob``/``rational_polynomial`` is refused; 4 coefficients with neither (k1 k2 p1 p2, or
          ``cv2.fisheye``'s k1..k4?) are refused, not guessed;
        - a Kalibr camchain ``.yaml`` with one camera (``pinhole``; ``radtan``, ``equidistant`` or ``none``);
        - COLMAP's ``cameras.txt`` with one camera (the pinhole, radial, OpenCV and fisheye models); its principal
          point is moved by -0.5 px (COLMAP puts the top-left pixel's centre at (0.5, 0.5));
        - OCamCalib's ``calib_results.txt`` (Scaramuzza's toolbox; recognised by its comment lines), the
          ``ocam`` model (:mod:`.ocam`);
        - anything else (``.txt``): 9 numbers of a 3×3 K (row-major, e.g. EndoSLAM ``fx,0,cx,0,fy,cy,0,0,1``)
          or 4 numbers ``fx fy cx cy``; the image size must then be given as ``width``/``height``.
        ``width``/``height``, when given for a file that states its own size, must agree with it.
        """
        from .calibration_files import read_calibration  # lazy: the readers import this module

        return read_calibration(Path(path), width, height)


def opencv_or_none(coeffs: Any) -> dict | None:
    """An OpenCV-model distortion dict from a bare coefficient list (None when empty or all zero)."""
    arr = np.asarray(coeffs, dtype=np.float64).ravel()
    if arr.size == 0 or not np.any(arr):
        return None
    return {"model": "opencv", "coeffs": arr.tolist()}


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
    from .calibration_files import read_calibration_at

    intr = read_calibration_at(path, width, height)
    try:
        fitted = intr.fitted(width, height)
    except ValueError as exc:
        raise ValueError(f"intrinsics file {path}: {exc}") from None
    if fitted is not intr:
        logger.info("rescaling intrinsics from %dx%d (%s) to %dx%d", intr.width, intr.height, path, width, height)
    return fitted


def pixel_rays(intrinsics: Intrinsics) -> np.ndarray:
    """Unit-z ray direction (x/z, y/z) of every pixel centre, float64 ``[H, W, 2]``.

    A 3D point of pixel (u, v) with depth z is ``z * (x, y, 1)``. Without distortion
    ``x = (u - cx) / fx, y = (v - cy) / fy``; with distortion the pixel is undistorted by
    ``cv2.undistortPoints`` polished by Newton's method (NaN for a pixel whose ray does not project back onto it
    within 1e-6 px: past the radial polynomial's turning point no ray reaches it) or ``cv2.fisheye.undistortPoints``; an
    ``ocam`` camera's
    rays are exact (:func:`.ocam.ocam_rays`, NaN where a pixel sees 90° or more off axis). A fisheye polynomial
    fitted to a scope often stops increasing before the image corners (beyond its calibrated range, where OpenCV's
    inversion returns -1e6, or near it, where it does not converge or lands past the turn): those pixels, found by
    projecting OpenCV's rays back, are inverted exactly by :func:`.fisheye.fisheye_angles` (beyond the range: the
    ray at its limit, in the pixel's own direction).
    """
    W, H = intrinsics.width, intrinsics.height
    if intrinsics.distortion is not None and intrinsics.distortion["model"] == "ocam":
        from .ocam import ocam_rays

        return ocam_rays(intrinsics.distortion["coeffs"], intrinsics.cx, intrinsics.cy, W, H)
    if intrinsics.distortion is None:
        rays = np.empty((H, W, 2), dtype=np.float64)
        rays[..., 0] = ((np.arange(W) - intrinsics.cx) / intrinsics.fx)[None, :]
        rays[..., 1] = ((np.arange(H) - intrinsics.cy) / intrinsics.fy)[:, None]
        return rays
    import cv2  # lazy: heavy import

    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    pix = np.stack([u, v], axis=-1).reshape(-1, 1, 2)
    K, D = intrinsics.K, intrinsics.dist_coeffs
    xd, yd = (u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy
    if intrinsics.distortion["model"] != "fisheye":
        rays = cv2.undistortPoints(pix, K, D, criteria=_UNDISTORT_CRITERIA).reshape(H, W, 2).astype(np.float64)
        return _refined_opencv_rays(rays, xd, yd, intrinsics.distortion, _RAY_TOLERANCE_PX / max(intrinsics.fx,
                                                                                                   intrinsics.fy))
    rays = cv2.fisheye.undistortPoints(pix, K, D, criteria=_FISHEYE_CRITERIA).reshape(H, W, 2).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        x, y = distort_normalized(rays[..., 0], rays[..., 1], intrinsics.distortion)
        good = (np.abs(x - xd) <= 1e-9) & (np.abs(y - yd) <= 1e-9) & (
            np.arctan(np.hypot(rays[..., 0], rays[..., 1])) <= fisheye_limit_angle(D))
    if not good.all():
        rd = np.hypot(xd[~good], yd[~good])
        scale = np.tan(fisheye_angles(rd, D)) / np.maximum(rd, 1e-300)
        rays[~good] = np.stack([xd[~good] * scale, yd[~good] * scale], axis=-1)
    return rays


def _refined_opencv_rays(rays: np.ndarray, xd: np.ndarray, yd: np.ndarray, distortion: dict,
                         tolerance: float) -> np.ndarray:
    """OpenCV-model rays float64 ``[H, W, 2]`` polished by Newton's method on ``distort_normalized(x, y) = (xd,
    yd)`` (normalised distorted coordinates ``xd, yd`` ``[H, W]``), from ``cv2.undistortPoints``' estimate: its
    fixed-point iteration stalls or oscillates where the radial factor flattens (the corners of wide lenses), leaving
    rays ~1e-3 px off or none at all. A ray is kept (else NaN) when it lands within ``tolerance`` (normalised) of
    its pixel, on the pixel's side of the centre (a negative radial factor folds rays across it) and on the
    increasing part of the lens map (Jacobian determinant > 0): past the radial factor's turning point no ray
    reaches the pixel, or only one folded back from beyond the turn."""
    out = rays.reshape(-1, 2).copy()
    txs, tys = xd.ravel(), yd.ravel()
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        x, y = distort_normalized(out[:, 0], out[:, 1], distortion)
        err = np.hypot(x - txs, y - tys)
        restart = ~np.isfinite(err)  # OpenCV gave up: start from the distorted point
        out[restart] = np.stack([txs[restart], tys[restart]], -1)
        err[restart] = np.inf
        active = np.flatnonzero(~(err <= 1e-3 * tolerance))
        for _ in range(_NEWTON_STEPS):
            x, y = out[active, 0], out[active, 1]
            a, b, c, d = _lens_jacobian(x, y, distortion)
            fx, fy = distort_normalized(x, y, distortion)
            det, ex, ey = a * d - b * c, fx - txs[active], fy - tys[active]
            step = np.stack([x - (d * ex - b * ey) / det, y - (a * ey - c * ex) / det], -1)
            fx, fy = distort_normalized(step[:, 0], step[:, 1], distortion)
            e = np.hypot(fx - txs[active], fy - tys[active])
            better = e < err[active]  # a step that does not bring the ray closer ends that pixel's search
            active = active[better]
            out[active], err[active] = step[better], e[better]
            active = active[e[better] > 1e-3 * tolerance]
            if not active.size:
                break
        a, b, c, d = _lens_jacobian(out[:, 0], out[:, 1], distortion)
        lost = ~((err <= tolerance) & (a * d - b * c > 0) & (out[:, 0] * txs + out[:, 1] * tys >= 0))
    out[lost] = np.nan
    return out.reshape(rays.shape)


def _lens_jacobian(x: np.ndarray, y: np.ndarray, distortion: dict) -> tuple[np.ndarray, ...]:
    """Jacobian ``(dxd/dx, dxd/dy, dyd/dx, dyd/dy)`` of :func:`distort_normalized` at (x, y), by central
    differences (steps ~1e-6 of the coordinates: ~1e-10 relative accuracy, ample for Newton's method)."""
    hx, hy = 1e-6 * np.maximum(1.0, np.abs(x)), 1e-6 * np.maximum(1.0, np.abs(y))
    xp, yp = distort_normalized(x + hx, y, distortion)
    xm, ym = distort_normalized(x - hx, y, distortion)
    xq, yq = distort_normalized(x, y + hy, distortion)
    xn, yn = distort_normalized(x, y - hy, distortion)
    return (xp - xm) / (2 * hx), (xq - xn) / (2 * hy), (yp - ym) / (2 * hx), (yq - yn) / (2 * hy)


def camera_rays(intrinsics: Intrinsics) -> np.ndarray:
    """:func:`pixel_rays` for callers that only read them; a distorted camera's are one shared read-only array, kept
    for the last two cameras: a video is back-projected and lens-corrected frame after frame through the same
    camera, and undistorting 1080p takes 0.15–0.6 s."""
    if intrinsics.distortion is None:  # closed form, cheap
        return pixel_rays(intrinsics)
    return _distorted_rays(json.dumps(intrinsics.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=2)
def _distorted_rays(camera: str) -> np.ndarray:
    rays = pixel_rays(Intrinsics.from_dict(json.loads(camera)))
    rays.flags.writeable = False
    return rays


def camera_ray_mask(intrinsics: Intrinsics) -> np.ndarray | None:
    """bool ``[H, W]``, read-only: the pixels that have a ray (:func:`camera_rays` finite; a distorted camera's
    pixels beyond its model's range have none), or None when every pixel has one. Kept with the rays, so a video's
    frames do not test the rays again."""
    if intrinsics.distortion is None:
        return None
    return _ray_mask(json.dumps(intrinsics.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=2)
def _ray_mask(camera: str) -> np.ndarray | None:
    has_ray = np.isfinite(_distorted_rays(camera)).all(-1)
    if has_ray.all():
        return None
    has_ray.flags.writeable = False
    return has_ray


def distort_normalized(x: Any, y: Any, distortion: dict | None) -> tuple[Any, Any]:
    """Apply lens distortion to normalised coordinates (x/z, y/z); works on numpy arrays and torch tensors.

    OpenCV model (``cv2.projectPoints``): r² = x²+y²,
    x' = x·(1+k1r²+k2r⁴+k3r⁶)/(1+k4r²+k5r⁴+k6r⁶) + 2p1xy + p2(r²+2x²) + s1r² + s2r⁴, y' likewise
    then, with the tilt coefficients τx, τy (14 coefficients), the sensor tilt's projective map (OpenCV's
    ``computeTiltProjectionMatrix``). Fisheye (``cv2.fisheye``): θ = atan(r),
    θd = θ(1+k1θ²+k2θ⁴+k3θ⁶+k4θ⁸), (x', y') = (θd/r)·(x, y). OCamCalib: :func:`.ocam.ocam_project`.
    """
    if distortion is None:
        return x, y
    c = list(distortion["coeffs"])
    if distortion["model"] == "ocam":  # (u, v) = (fx·x' + cx, fy·y' + cy) with fx = |a0|, fy = |c·a0|
        from .ocam import ocam_project

        return ocam_project(x, y, c, -c[3], abs(c[0] * c[3]))
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
    tilt = c[12:14] if len(c) == 14 and (c[12] or c[13]) else None
    c = c + [0.0] * (12 - len(c[:12]))
    k1, k2, p1, p2, k3, k4, k5, k6, s1, s2, s3, s4 = c[:12]
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    r4 = r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) + s1 * r2 + s2 * r4
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y + s3 * r2 + s4 * r4
    if tilt is None:
        return xd, yd
    m = tilt_matrix(*tilt)
    w = m[2, 0] * xd + m[2, 1] * yd + m[2, 2]
    return (m[0, 0] * xd + m[0, 1] * yd + m[0, 2]) / w, (m[1, 0] * xd + m[1, 1] * yd + m[1, 2]) / w


def tilt_matrix(tau_x: float, tau_y: float) -> np.ndarray:
    """float64 3×3 projective map of a sensor tilted by τx about x then τy about y (radians), applied to distorted
    normalised coordinates (OpenCV's ``computeTiltProjectionMatrix``, its 14-coefficient model): R = R_y(τy)·R_x(τx)
    and the projection back onto the untilted image plane, ``[[R22, 0, −R02], [0, R22, −R12], [0, 0, 1]] · R``."""
    cx, sx, cy, sy = math.cos(tau_x), math.sin(tau_x), math.cos(tau_y), math.sin(tau_y)
    rot = np.array([[cy, 0.0, -sy], [0.0, 1.0, 0.0], [sy, 0.0, cy]]) @ np.array([[1.0, 0.0, 0.0], [0.0, cx, sx],
                                                                                [0.0, -sx, cx]])
    return np.array([[rot[2, 2], 0.0, -rot[0, 2]], [0.0, rot[2, 2], -rot[1, 2]], [0.0, 0.0, 1.0]]) @ rot
