"""Endoscope lighting: a point light at the camera centre, Lambert + Blinn-Phong, inverse-square fall-off.

With the light at the camera the half vector equals the view vector, so Blinn-Phong's ``(n·h)^s`` is
``(n·l)^s`` (Blinn 1977). Radiance falls off as ``1 / d²`` with the ray length ``d`` (near wall bright, far
lumen dark). An auto-exposure maps a high percentile of the image to ``exposure`` as endoscope processors do.

All per-pixel work is float32 on [H, W] planes (one array per vector or colour component): numpy processes
those much faster than interleaved [H, W, 3] arrays, broadcasts over a length-3 axis or reductions along it.
"""
from __future__ import annotations

import numpy as np


def _tangent(comps: tuple[np.ndarray, ...], valid: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """One-sided differences of the point components along ``axis`` (0 = rows, 1 = columns), each taken on the
    side with the smaller depth jump (forward at index i is ``p[i+1] - p[i]``; the borders use their only side).

    Args:
        comps: float32 [H, W] x, y, z point components.
        valid: bool [H, W].
    Returns:
        float32 [H, W] x, y, z tangent components.
    """
    diffs = [np.diff(c, axis=axis) for c in comps]
    inner = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
    outer = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
    both = valid[inner] & valid[outer]
    jump = np.where(both, np.abs(diffs[2]), np.float32(np.inf))
    forward = jump[inner] <= jump[outer]  # interior pixels: forward difference has the smaller jump
    out = []
    for dc in diffs:
        t = np.empty(valid.shape, np.float32)
        if axis == 0:
            t[0], t[-1] = dc[0], dc[-1]
            np.copyto(t[1:-1], np.where(forward, dc[1:], dc[:-1]))
        else:
            t[:, 0], t[:, -1] = dc[:, 0], dc[:, -1]
            np.copyto(t[:, 1:-1], np.where(forward, dc[:, 1:], dc[:, :-1]))
        out.append(t)
    return tuple(out)


def normal_planes(points: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit surface normals facing the camera, as three float32 [H, W] planes (see ``normals_from_points``)."""
    px, py, pz = (points[..., k].astype(np.float32) for k in range(3))
    tx, ty, tz = _tangent((px, py, pz), valid, 1)
    sx, sy, sz = _tangent((px, py, pz), valid, 0)
    nx, ny, nz = ty * sz - tz * sy, tz * sx - tx * sz, tx * sy - ty * sx  # (d/du) x (d/dv)
    scale = np.sqrt(nx * nx + ny * ny + nz * nz)
    np.maximum(scale, np.float32(1e-12), out=scale)
    np.divide(np.float32(1.0), scale, out=scale)
    # the normal must point back towards the camera at the origin; invalid pixels get (0, 0, -1)
    facing = nx * px + ny * py + nz * pz > 0
    scale[facing] *= -1
    scale[~valid] = 0.0
    nx *= scale
    ny *= scale
    nz *= scale
    nz[~valid] = -1.0
    return nx, ny, nz


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
    return np.stack(normal_planes(points, valid), axis=-1)


def shade(albedo: np.ndarray, normals: np.ndarray, dirs: np.ndarray, ray_length: np.ndarray, valid: np.ndarray,
          specular: np.ndarray, shininess: np.ndarray, ambient: float) -> np.ndarray:
    """Linear radiance (arbitrary units) of a camera-mounted point light.

    Args:
        albedo: float [H, W, 3] linear RGB.
        normals: float [H, W, 3] unit, camera frame.
        dirs: float [H, W, 3] unit ray directions, camera frame.
        ray_length: float [H, W] mm (distance to the light, which sits at the camera).
        valid: bool [H, W]; invalid pixels get 0.
        specular: float [H, W] specular reflectance; shininess: float [H, W] Phong exponent (> 0).
        ambient: constant ambient fraction (inter-reflections in the lumen).
    Returns:
        float32 [H, W, 3], scaled so that a Lambertian white patch facing the camera at 10 mm gives 1.
    """
    n = [np.asarray(normals[..., k], np.float32) for k in range(3)]
    d = [np.asarray(dirs[..., k], np.float32) for k in range(3)]
    cos = -(n[0] * d[0] + n[1] * d[1] + n[2] * d[2])
    diffuse, spec = lighting(cos, ray_length, valid, specular, shininess, ambient)
    return np.stack([np.asarray(albedo[..., k], np.float32) * diffuse + spec for k in range(3)], axis=-1)


def lighting(cos: np.ndarray, ray_length: np.ndarray, valid: np.ndarray, specular: np.ndarray | float,
             shininess: np.ndarray | float, ambient: float, *, beam: np.ndarray | None = None,
             fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The two factors of ``shade``: radiance = albedo * diffuse + spec, per colour channel.

    Args:
        cos: float [H, W] ``-n·d`` (clipped to [0, 1] here); the other arguments as in ``shade``.
        beam: float [H, W] the light's emission towards each pixel's ray relative to the optical axis
            (``beam_profile``; None = uniform).
        fill: inter-reflection fill: a diffuse light ``fill`` times the mean diffuse irradiance (direct + ambient)
            of the visible surface reaches every valid pixel whatever its distance (light bouncing around a closed lumen),
            so the far lumen is never as dark as ``1 / d²`` alone makes it. 0 = none.
    Returns:
        diffuse, spec: float32 [H, W] (0 where invalid).
    """
    cos = np.clip(np.asarray(cos, np.float32), 0.0, 1.0)
    d = np.maximum(np.where(valid, ray_length, np.inf).astype(np.float32), np.float32(1.0))
    falloff = np.float32(100.0) / (d * d)
    if beam is not None:
        falloff *= beam
    # cos ** shininess as exp(s log cos) (a float32 power with a non-integer exponent is ~20x slower)
    with np.errstate(divide="ignore"):
        spec = np.exp(np.log(cos) * np.asarray(shininess, np.float32))
    spec *= specular
    spec *= falloff
    diffuse = cos * falloff
    diffuse += np.float32(ambient) * np.sqrt(np.sqrt(np.minimum(falloff, np.float32(1.0))))
    if fill > 0 and valid.any():
        diffuse += np.float32(fill * float(np.mean(diffuse[valid])))
    invalid = ~valid
    diffuse[invalid] = 0.0
    spec[invalid] = 0.0
    return diffuse, spec


def beam_profile(axial: np.ndarray, exponent: float) -> np.ndarray:
    """Emission of the scope's light towards each ray, ``cos(angle to the optical axis) ** exponent``: light guides
    emit a cone brightest on the axis (0 = uniform). ``axial``: float [H, W] z component of the unit ray
    directions. Returns float32 [H, W] in [0, 1]."""
    return np.power(np.clip(np.asarray(axial, np.float32), 0.0, 1.0), np.float32(exponent))


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
    planes = [np.asarray(radiance[..., k], np.float32) for k in range(3)]
    return np.stack(expose_planes(planes, valid, exposure, gamma, vignette, saturation, percentile), axis=-1)


def expose_planes(planes: list[np.ndarray], valid: np.ndarray, exposure: float, gamma: float,
                  vignette: np.ndarray, saturation: float = 1.0, percentile: float = 90.0) -> list[np.ndarray]:
    """``expose`` on the three colour planes (float32 [H, W] each; new arrays are returned)."""
    # the brightest channel saturates first: expose on it to keep colours
    peak = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
    ref = float(np.percentile(peak[valid], percentile)) if valid.any() else 1.0
    gain = np.asarray(vignette, np.float32) * np.float32(exposure / max(ref, 1e-9))
    knee = np.float32(0.8)
    out = []
    for plane in planes:
        x = plane * gain
        # soft shoulder above the knee so specular highlights saturate smoothly, like a sensor's knee
        bright = x > knee
        if bright.any():
            over = x[bright] - knee
            x[bright] = knee + (1 - knee) * (1 - np.exp(-over / (1 - knee)))
        np.clip(x, 0.0, 1.0, out=x)
        # x ** (1 / gamma) as exp(log(x) / gamma): the same to float32 rounding, 3x faster
        with np.errstate(divide="ignore"):
            np.log(x, out=x)
        x *= np.float32(1.0 / gamma)
        np.exp(x, out=x)
        out.append(x)
    grey = out[0] + out[1]
    grey += out[2]
    grey *= np.float32(1.0 / 3.0)
    for x in out:
        x -= grey
        x *= np.float32(saturation)
        x += grey
        np.clip(x, 0.0, 1.0, out=x)
    return out
