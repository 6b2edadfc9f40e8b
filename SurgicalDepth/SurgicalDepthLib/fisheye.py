"""OpenCV's fisheye lens model (``cv2.fisheye``, Kannala–Brandt with four coefficients) inverted exactly: normalised
distorted radius ``θd`` → incidence angle ``θ``, ``θd = θ(1 + k1θ² + k2θ⁴ + k3θ⁶ + k4θ⁸)``. Polynomials fitted to a
scope often stop increasing before the image corners (beyond the calibrated range); the inversion keeps to the
increasing part and gives the radii beyond it that part's limit angle. Pure numpy functions (``camera.pixel_rays``
uses them where OpenCV's own inversion fails).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _fisheye_poly(theta: Any, coeffs: Any) -> tuple[Any, Any]:
    """OpenCV's fisheye ``θd = θ(1 + k1θ² + k2θ⁴ + k3θ⁶ + k4θ⁸)`` and its slope ``dθd/dθ`` at angles θ
    (radians)."""
    k1, k2, k3, k4 = (float(c) for c in coeffs)
    t2 = theta * theta
    return (theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))),
            1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4))))


def fisheye_radius(theta: Any, coeffs: Any) -> np.ndarray:
    """Normalised distorted radius ``θd`` (float64) of incidence angles θ (radians) under OpenCV's fisheye model."""
    return _fisheye_poly(np.asarray(theta, np.float64), coeffs)[0]


def fisheye_limit_angle(coeffs: Any) -> float:
    """End (radians) of the increasing part of OpenCV's fisheye ``θd(θ)``: 0.999 of the first angle where its slope
    reaches 0, or of 90° (the most a fisheye ray sees off axis)."""
    grid = np.linspace(0.0, np.pi / 2, 20001)[1:]
    rising = _fisheye_poly(grid, coeffs)[1] > 0
    return float(0.999 * (grid[np.argmin(rising)] if not rising.all() else grid[-1]))


def fisheye_angles(rd: np.ndarray, coeffs: Any) -> np.ndarray:
    """Incidence angle θ (radians, float64, rd's shape) of normalised distorted radii ``rd >= 0`` under OpenCV's
    fisheye model, by Newton's method kept inside a shrinking bracket on the increasing part of ``θd(θ)``
    (:func:`fisheye_limit_angle`). Radii beyond that part's end get its limit angle."""
    limit = fisheye_limit_angle(coeffs)
    rd = np.minimum(np.asarray(rd, np.float64), _fisheye_poly(limit, coeffs)[0])
    lo, hi = np.zeros_like(rd), np.full_like(rd, limit)
    theta = np.minimum(rd, limit)
    for _ in range(100):
        value, slope = _fisheye_poly(theta, coeffs)
        miss = value - rd
        if np.abs(miss).max(initial=0.0) <= 1e-14:
            break
        lo, hi = np.where(miss < 0, theta, lo), np.where(miss > 0, theta, hi)
        step = theta - miss / slope
        theta = np.where((step > lo) & (step < hi), step, 0.5 * (lo + hi))
    return theta
