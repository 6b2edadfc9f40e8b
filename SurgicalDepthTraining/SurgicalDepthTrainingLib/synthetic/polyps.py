"""Sessile polyps on a lumen wall: smooth domes raised into the lumen, with their own mucosa tint.

Sizes follow the endoscopic classification of colorectal polyps (Paris classification, Endoscopy 2003; size bands
of the ESGE polypectomy guideline, Ferlitsch et al. 2017): diminutive (< 5 mm), small (6-9 mm) and large (>= 10 mm)
base diameters, sessile type 0-Is rising about half to once their base radius. A dome is a radial height field on
the tube wall, so it is part of the exact implicit surface (``TubeSurface``) and its depth is exact like the rest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASE_RADIUS_MM = (2.0, 9.0)   # half the base diameter: 4-18 mm polyps
RISE = (0.4, 0.9)             # height / base radius (flat-elevated to hemispherical)
MAX_HEIGHT_FRACTION = 0.4     # a dome never rises more than this fraction of the local lumen radius


@dataclass(frozen=True)
class Polyp:
    """One dome: centre at axial position ``z_mm`` and wall angle ``theta`` (radians, the tube's angular
    coordinate), ``base_mm`` base radius along the wall, ``height_mm`` rise into the lumen, ``tint`` linear-RGB
    albedo multiplier (float [3])."""

    z_mm: float
    theta: float
    base_mm: float
    height_mm: float
    tint: tuple[float, float, float]


def draw_polyps(rng: np.random.Generator, per_100mm: float, z_range: tuple[float, float], radius_mm: float
                ) -> list[Polyp]:
    """Polyps scattered along a tube wall: a Poisson count with mean ``per_100mm`` per 100 mm of ``z_range``,
    uniform in ``z`` and angle, sizes uniform in :data:`BASE_RADIUS_MM` and :data:`RISE` (height capped at
    :data:`MAX_HEIGHT_FRACTION` of ``radius_mm``)."""
    if per_100mm < 0:
        raise ValueError(f"polyps per 100 mm must be >= 0, got {per_100mm!r}")
    count = int(rng.poisson(per_100mm * (z_range[1] - z_range[0]) / 100.0)) if per_100mm > 0 else 0
    polyps = []
    for _ in range(count):
        base = float(rng.uniform(*BASE_RADIUS_MM))
        height = min(base * float(rng.uniform(*RISE)), MAX_HEIGHT_FRACTION * radius_mm)
        # adenomas look redder or paler than the surrounding mucosa, hyperplastic ones close to it
        tint = tuple(float(t) for t in np.clip(rng.normal([1.0, 0.95, 0.95], 0.12), 0.6, 1.4))
        polyps.append(Polyp(z_mm=float(rng.uniform(*z_range)), theta=float(rng.uniform(-np.pi, np.pi)),
                            base_mm=base, height_mm=height, tint=tint))
    return polyps


def dome(distance_mm: np.ndarray, base_mm: float) -> np.ndarray:
    """Dome profile in [0, 1]: ``1 - 3u² + 2u³`` with ``u = (d / base)²`` inside the base, 0 outside.

    A broad, rounded top (0.84 at half the base radius, a hemisphere 0.87) whose slope is continuous and zero at
    the rim (no crease where the polyp meets the wall); the steepest slope is ``2.24 / base`` per mm of height.
    """
    u = np.clip((np.asarray(distance_mm) / base_mm) ** 2, 0.0, 1.0)
    return 1.0 - u * u * (3.0 - 2.0 * u)


def _window(polyp: Polyp, start: float, step: float, n: int, reach: float) -> slice:
    lo = int(np.floor((polyp.z_mm - reach - start) / step))
    hi = int(np.ceil((polyp.z_mm + reach - start) / step)) + 1
    return slice(min(max(lo, 0), n), min(max(hi, 0), n))


def polyp_tables(polyps: list[Polyp], z: np.ndarray, n_theta: int, radius_mm: float) -> np.ndarray:
    """Sum of the polyps' domes on a tube table: float64 [len(z), n_theta] rise into the lumen, mm (>= 0).

    Args:
        z: float [K] evenly spaced axial positions of the table rows, mm.
        n_theta: columns over ``[-π, π)`` (column ``j`` at ``-π + 2π j / n_theta``).
        radius_mm: mean lumen radius: converts wall arc length to angle.
    """
    return _splat(polyps, z, n_theta, radius_mm, lambda p: (p.height_mm,))[..., 0]


def _splat(polyps: list[Polyp], z: np.ndarray, n_theta: int, radius_mm: float, weight, power: float = 1.0
           ) -> np.ndarray:
    """``Σ weight(p) · dome(distance to p) ** power`` over a tube table: float64 ``[len(z), n_theta, C]`` for
    ``weight(p)`` a sequence of ``C`` values (distance along the wall: axial offset and arc ``radius_mm · Δθ``)."""
    out = np.zeros((len(z), n_theta, len(weight(polyps[0])) if polyps else 1))
    if not polyps or len(z) < 2:
        return out
    step = float(z[1] - z[0])
    theta = -np.pi + 2 * np.pi * np.arange(n_theta) / n_theta
    for p in polyps:
        rows = _window(p, float(z[0]), step, len(z), p.base_mm)
        if rows.start >= rows.stop:
            continue
        dth = np.angle(np.exp(1j * (theta - p.theta)))              # wrapped to (-π, π]
        dist = np.hypot((z[rows] - p.z_mm)[:, None], radius_mm * dth[None, :])
        out[rows] += np.asarray(weight(p), np.float64) * (dome(dist, p.base_mm) ** power)[..., None]
    return out


def tint_albedo(albedo: np.ndarray, polyps: list[Polyp], z0: float, step_z: float, radius_mm: float
                ) -> np.ndarray:
    """``albedo`` (float32 [rows, cols, 3], rows every ``step_z`` mm from ``z0``, cols over ``[-π, π)``) with each
    polyp's tint blended in over its dome (full tint at the top, none at the rim). Returns a new array."""
    rows, cols = albedo.shape[:2]
    z = z0 + step_z * np.arange(rows)
    change = _splat(polyps, z, cols, radius_mm, lambda p: np.subtract(p.tint, 1.0), power=0.5)
    return np.clip(albedo * (1.0 + change).astype(np.float32), 0.0, 1.0).astype(np.float32)
