"""Scaramuzza's omnidirectional camera model (OCamCalib), the calibration of many endoscopes (C3VD's colonoscope
among them), as ``Intrinsics.distortion = {"model": "ocam", "coeffs": [c, d, e, a0, a1, ..., aN]}``.

The model (D. Scaramuzza et al., "A Toolbox for Easily Calibrating Omnidirectional Cameras", IROS 2006; the
``cam2world``/``world2cam`` of the toolbox's ``ocam_functions.c``): a pixel at (row, col) has sensor coordinates

    (row − xc, col − yc) = A · (xp, yp),    A = [[c, d], [e, 1]],

and looks along (xp, yp, f(ρ)) with ρ = |(xp, yp)| and f(ρ) = a0 + a1 ρ + ... + aN ρ^N (a0 < 0: the toolbox's z
axis points away from the scene). Its axes are x along the rows, y along the columns; in this project's camera frame
(x right, y down, z forward) the ray is (yp, xp, −f(ρ)). ``Intrinsics.cx, cy`` hold the centre (yc, xc) — column,
row — and ``fx = |a0|``, ``fy = c·|a0|`` the focal lengths at the centre, so that ``distort_normalized``'s output
maps to pixels like the other models' (u = fx·x' + cx, v = fy·y' + cy).

Projection finds the sensor radius whose ray has the point's angle off axis, ``atan2(ρ, −f(ρ)) = θ``, by a
bracketed Newton's method instead of the toolbox's fitted inverse polynomial, so that pixel → ray → pixel is
exact. Pure functions on numpy arrays or torch tensors.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any

import numpy as np

__all__ = ["is_ocam_text", "ocam_project", "ocam_rays", "parse_ocam", "scaled_ocam"]

_NEWTON_STEPS = 12


def _parts(coeffs: list[float]) -> tuple[float, float, float, list[float]]:
    c, d, e, *poly = coeffs
    return c, d, e, poly


def _poly(poly: list[float], r: Any) -> tuple[Any, Any]:
    """f(r) and f'(r) by Horner's rule (numpy or torch ``r``)."""
    value, slope = r * 0.0 + poly[-1], r * 0.0
    for a in reversed(poly[:-1]):
        slope = slope * r + value
        value = value * r + a
    return value, slope


def ocam_rays(coeffs: list[float], cx: float, cy: float, width: int, height: int) -> np.ndarray:
    """Unit-z rays (x/z, y/z) of every pixel centre, float64 ``[height, width, 2]``; NaN where the ray does not
    point forward (f(ρ) >= 0)."""
    c, d, e, poly = _parts(coeffs)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    dr, dc = v - cy, u - cx  # row and column offsets from the centre (xc = cy, yc = cx)
    inv_det = 1.0 / (c - d * e)
    xp = inv_det * (dr - d * dc)
    yp = inv_det * (-e * dr + c * dc)
    forward = -_poly(poly, np.hypot(xp, yp))[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        rays = np.stack([yp / forward, xp / forward], axis=-1)
    rays[~(forward > 0)] = np.nan
    return rays


def _where(cond: Any, a: Any, b: Any) -> Any:
    """``np.where`` or ``torch.where``, after ``cond``'s kind."""
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    import torch  # lazy: only torch callers get here

    return torch.where(cond, a, b)


def _atan2(y: Any, x: Any) -> Any:
    return np.arctan2(y, x) if isinstance(y, np.ndarray) else y.atan2(x)


@functools.lru_cache(maxsize=8)
def _limit_radius(poly: tuple[float, ...]) -> float:
    """Sensor radius ρ (px) where the lens stops seeing farther off axis: the end of the rising part of the ray's
    angle ``atan2(ρ, −f(ρ))``, or where it reaches 90° (f(ρ) = 0), searched up to 50·|a0|."""
    rho = np.linspace(0.0, 50.0 * abs(poly[0]), 100001)[1:]
    value = _poly(list(poly), rho)[0]
    stop = (np.diff(np.arctan2(rho, -value)) <= 0) | (value[1:] >= 0)
    return float(rho[np.argmax(stop)] if stop.any() else rho[-1])


def ocam_project(x: Any, y: Any, coeffs: list[float], fx: float, fy: float) -> tuple[Any, Any]:
    """Normalised coordinates (x/z, y/z) of points in front of the camera → the model's (x', y') with
    ``(u, v) = (fx·x' + cx, fy·y' + cy)``; numpy arrays or torch tensors. Points farther off axis than the lens sees
    (:func:`_limit_radius`) land at its limit radius, in their own direction."""
    c, d, e, poly = _parts(coeffs)
    r = (x * x + y * y) ** 0.5
    theta = _atan2(r, r * 0.0 + 1.0)  # the point's angle off axis
    # atan2(ρ, −f(ρ)) = θ: the sensor radius whose ray is θ off axis, by Newton's method kept inside a shrinking
    # bracket [lo, hi]. The angle is nearly linear in ρ for wide lenses; the slope form ρ + r·f(ρ) = 0 is not, and
    # its iteration diverged from ~80° off axis.
    lo, hi = r * 0.0, r * 0.0 + _limit_radius(tuple(poly))
    rho = _where(theta * abs(poly[0]) < hi, theta * abs(poly[0]), 0.5 * hi)  # the equidistant guess
    for _ in range(_NEWTON_STEPS):
        value, slope = _poly(poly, rho)
        miss = _atan2(rho, -value) - theta
        lo, hi = _where(miss < 0, rho, lo), _where(miss > 0, rho, hi)
        step = rho - miss * (rho * rho + value * value) / (rho * slope - value)
        rho = _where((step >= lo) & (step <= hi), step, 0.5 * (lo + hi))  # a root found stays
    scale = _where(r > 1e-12, rho / r, 0.0)
    xp, yp = y * scale, x * scale  # toolbox axes: x along the rows, y along the columns
    row, col = c * xp + d * yp, e * xp + yp  # offsets from the centre
    return col / fx, row / fy


def scaled_ocam(coeffs: list[float], s: float) -> list[float]:
    """Coefficients of the same lens for an image resized by ``s`` (both sides): f is in pixels of ρ, so
    a_i → a_i · s^(1−i); the affine part is unitless."""
    c, d, e, poly = _parts(coeffs)
    return [c, d, e] + [a * s ** (1 - i) for i, a in enumerate(poly)]


def is_ocam_text(text: str) -> bool:
    """Whether a file's text looks like the toolbox's ``calib_results.txt`` (its comment lines name the
    polynomial)."""
    return "#polynomial coefficients" in text[:4000].lower()


def parse_ocam(text: str, source: Any) -> dict[str, Any]:
    """The toolbox's ``calib_results.txt`` (its text; ``source`` names it in errors): ``Intrinsics`` keyword
    arguments (fx, fy, cx, cy, width, height, distortion). Its numeric lines are, in order: ``N a0 .. a(N-1)``
    (direct polynomial), ``M p0 ..`` (inverse polynomial, not used: projection is exact here), ``xc yc`` (row, column
    of the centre, 0-based), ``c d e``, ``height width``."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                rows.append([float(t) for t in re.split(r"[,\s]+", line) if t])
            except ValueError:
                raise ValueError(f"OCamCalib file {source}: not a line of numbers: {line[:60]!r}") from None
    if len(rows) < 5 or not rows[0] or int(rows[0][0]) != len(rows[0]) - 1 or len(rows[0]) < 2:
        raise ValueError(f"OCamCalib file {source}: expected the lines 'N a0 .. a(N-1)', 'M p0 ..', 'xc yc', "
                         "'c d e', 'height width' (calib_results.txt)")
    poly = rows[0][1:]
    (xc, yc), (c, d, e), (height, width) = rows[2][:2], rows[3][:3], rows[4][:2]
    if not poly[0] < 0 or not math.isfinite(c - d * e) or c - d * e == 0:
        raise ValueError(f"OCamCalib file {source}: a0 must be < 0 and c - d·e non-zero, got a0={poly[0]:g}, "
                         f"c={c:g}, d={d:g}, e={e:g}")
    return {"fx": abs(poly[0]), "fy": abs(c * poly[0]), "cx": yc, "cy": xc, "width": int(width),
            "height": int(height), "distortion": {"model": "ocam", "coeffs": [c, d, e, *poly]}}
