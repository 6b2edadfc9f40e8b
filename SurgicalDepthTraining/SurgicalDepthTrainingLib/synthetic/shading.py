"""Endoscope lighting: a point light at the camera centre, Lambert + Blinn-Phong, inverse-square fall-off.

With the light at the camera the half vector equals the view vector, so Blinn-Phong's ``(n·h)^s`` is
``(n·l)^s`` (Blinn 1977). Radiance falls off as ``1 / d²`` with the ray length ``d`` (near wall bright, far
lumen dark). An auto-exposure maps a high percentile of the image to ``exposure`` as endoscope processors do.
"""
from __future__ import annotations

import numpy as np


def normals_from_points(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Unit surface normals from a camera-frame point map, facing the camera.

    Tangents are one-sided differences, each taken on the side with the smaller depth jump, so normals stay
    correct at occlusion edges (a fold in front of the far wall).

    Args:
        points: float [H, W, 3] camera-frame points, mm.
        valid: bool [H, W].
    Returns:
        float32 [H, W, 3]; (0, 0, -1) where invalid.
    """
    p = points.astype(np.float32)
    inf = np.float32(np.inf)

    def tangent(axis: int) -> np.ndarray:
        # one-sided differences (forward at index i is p[i+1] - p[i]); borders reuse the other side
        diff = np.diff(p, axis=axis)
        ok = np.diff(valid.astype(np.int8), axis=axis) == 0
        ok &= (valid[1:, :] if axis == 0 else valid[:, 1:])
        jump = np.where(ok, np.abs(diff[..., 2]), inf)
        pad = [(0, 0)] * 2
        pad_f, pad_b = list(pad), list(pad)
        pad_f[axis], pad_b[axis] = (0, 1), (1, 0)
        fwd = np.pad(diff, pad_f + [(0, 0)], mode="edge")
        bwd = np.pad(diff, pad_b + [(0, 0)], mode="edge")
        jf = np.pad(jump, pad_f, constant_values=inf)
        jb = np.pad(jump, pad_b, constant_values=inf)
        return np.where((jf <= jb)[..., None], fwd, bwd)

    n = np.cross(tangent(1), tangent(0))
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = n / np.maximum(norm, 1e-12)
    facing = np.einsum("hwc,hwc->hw", n, p) > 0  # normal must point back towards the camera at the origin
    n[facing] *= -1
    n[~valid] = (0.0, 0.0, -1.0)
    return n.astype(np.float32)


def shade(albedo: np.ndarray, normals: np.ndarray, dirs: np.ndarray, ray_length: np.ndarray, valid: np.ndarray,
          specular: np.ndarray, shininess: np.ndarray, ambient: float) -> np.ndarray:
    """Linear radiance (arbitrary units) of a camera-mounted point light.

    Args:
        albedo: float [H, W, 3] linear RGB.
        normals: float [H, W, 3] unit, camera frame.
        dirs: float [H, W, 3] unit ray directions, camera frame.
        ray_length: float [H, W] mm (distance to the light, which sits at the camera).
        valid: bool [H, W]; invalid pixels get 0.
        specular: float [H, W] specular reflectance; shininess: float [H, W] Phong exponent.
        ambient: constant ambient fraction (inter-reflections in the lumen).
    Returns:
        float32 [H, W, 3], scaled so that a Lambertian white patch facing the camera at 10 mm gives 1.
    """
    cos = np.clip(-np.einsum("hwc,hwc->hw", normals, dirs), 0.0, 1.0)
    d = np.where(valid, ray_length, np.inf)
    falloff = 100.0 / np.maximum(d, 1.0) ** 2
    spec = specular * cos ** shininess
    radiance = albedo * (cos * falloff)[..., None] + (spec * falloff)[..., None]
    radiance += ambient * albedo * np.minimum(falloff, 1.0)[..., None] ** 0.25
    radiance[~valid] = 0.0
    return radiance.astype(np.float32)


def vignette_map(height: int, width: int, strength: float) -> np.ndarray:
    """Multiplier ``1 - strength * (r / r_corner)²`` (r from the image centre), float32 [H, W]."""
    yy, xx = np.mgrid[0:height, 0:width]
    r2 = ((xx - (width - 1) / 2) ** 2 + (yy - (height - 1) / 2) ** 2) / (
        ((width - 1) / 2) ** 2 + ((height - 1) / 2) ** 2)
    return (1.0 - strength * r2).astype(np.float32)


def expose(radiance: np.ndarray, valid: np.ndarray, exposure: float, gamma: float, vignette: np.ndarray,
           saturation: float = 1.0, percentile: float = 90.0) -> np.ndarray:
    """Auto-exposure, vignetting, highlight roll-off and gamma: linear radiance -> display values in [0, 1].

    Args:
        radiance: float [H, W, 3] linear.
        valid: bool [H, W] pixels used for the exposure statistic.
        exposure: the ``percentile`` of the luminance of valid pixels is mapped to this value.
        gamma: display gamma (2.2 ≈ sRGB).
        vignette: float [H, W] multiplier for the corner darkening (``vignette_map``).
        saturation: colour gain around the grey value after gamma (endoscope processors boost reds).
    Returns:
        float32 [H, W, 3] in [0, 1].
    """
    peak = radiance.max(axis=-1)  # the brightest channel saturates first: expose on it to keep colours
    ref = float(np.percentile(peak[valid], percentile)) if valid.any() else 1.0
    x = radiance * (exposure / max(ref, 1e-9))
    x *= vignette[..., None]
    # soft shoulder above the knee so specular highlights saturate smoothly, like a sensor's knee
    knee = 0.8
    over = np.maximum(x - knee, 0.0)
    x = np.where(x > knee, knee + (1 - knee) * (1 - np.exp(-over / (1 - knee))), x)
    x = np.clip(x, 0.0, 1.0) ** (1.0 / gamma)
    grey = x.mean(axis=-1, keepdims=True)
    return np.clip(grey + saturation * (x - grey), 0.0, 1.0).astype(np.float32)
