"""Camera rays and exact ray casting against implicit surfaces.

Rays are marched with sphere tracing; once ``F`` changes sign the bracket is refined with the Illinois variant of
regula falsi in float64 to ``tol`` mm (both in ``roots``), so the returned hit lies on the surface to well below
1e-4 mm. ``cast`` does this coarse-to-fine for a whole camera image.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.fisheye import fisheye_angles, fisheye_radius

from .roots import march_bound, march_bound_planar, ray_points, refine, trace, trace_planar

logger = logging.getLogger(__name__)

__all__ = ["camera_rays", "cast", "march_bound", "rotate", "trace"]


def rotate(rot: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``v @ rot.T`` for ``v: float [..., 3]`` and ``rot: float [3, 3]``; float64 [..., 3].

    ``cv2.transform`` treats the vectors as 3-channel pixels: ~40x faster than numpy for a full frame of rays.
    """
    v = np.ascontiguousarray(v, np.float64)
    if v.size == 0:
        return v.copy()
    return cv2.transform(v.reshape(-1, 1, 3), np.asarray(rot, np.float64)).reshape(v.shape)


def camera_rays(intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions through every pixel centre, in the camera frame (x right, y down, z forward).

    Pinhole: ``(u - cx) / fx, (v - cy) / fy, 1`` normalised. Fisheye (OpenCV model, ``distortion =
    {"model": "fisheye", "coeffs": [k1, k2, k3, k4]}``): the distorted radius ``θd`` is inverted for the incidence
    angle ``θ`` (:func:`SurgicalDepthLib.fisheye.fisheye_angles`, on the increasing part of the polynomial); pixels
    whose ``θ`` would reach 89°, or whose radius lies beyond what the increasing part reaches (a calibration's
    polynomial that turns over before the corners), are flagged invalid.

    Returns:
        dirs: float64 [H, W, 3] unit vectors; ``dirs[..., 2]`` converts ray length to z-depth.
        inside: bool [H, W], pixels that see the scene through the lens.
    """
    h, w = intrinsics.height, intrinsics.width
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    x = (u - intrinsics.cx) / intrinsics.fx
    y = (v - intrinsics.cy) / intrinsics.fy
    inside = np.ones((h, w), bool)
    dist = intrinsics.distortion
    if dist is not None:
        if dist.get("model") != "fisheye":
            raise ValueError(f"intrinsics.distortion model must be 'fisheye' or distortion None, got {dist!r}")
        coeffs = tuple(float(c) for c in dist["coeffs"])
        if len(coeffs) != 4:
            raise ValueError(f"fisheye distortion needs 4 coeffs k1..k4, got {coeffs!r}")
        theta_d = np.hypot(x, y)
        theta = fisheye_angles(theta_d, coeffs)
        reached = np.abs(fisheye_radius(theta, coeffs) - theta_d) <= 1e-9 * np.maximum(theta_d, 1.0)
        inside = (theta < np.deg2rad(89.0)) & reached
        theta = np.where(inside, theta, 0.0)
        scale = np.where(theta_d > 1e-12, np.tan(theta) / np.maximum(theta_d, 1e-12), 1.0)
        x, y = x * scale, y * scale
    dirs = np.stack([x, y, np.ones_like(x)], axis=-1)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return dirs, inside


def _first_hits(surface, origin: np.ndarray, dirs_t: np.ndarray, t_max: np.ndarray, min_step_per_mm: float,
                t_start: np.ndarray | None = None) -> np.ndarray:
    """Ray lengths of the first tissue hits (``inf`` = none) for planar directions ``dirs_t: float64 [3, N]``;
    ``t_start`` (if given) is checked to be in free space, and rays where it is not are marched from the camera
    instead."""
    if t_start is None:
        t_start = march_bound_planar(surface.bound, surface.envelope_lipschitz, origin, dirs_t, t_max)
    else:
        start = np.minimum(t_start, t_max)
        outside = np.flatnonzero(surface.field(ray_points(origin, dirs_t, start).astype(np.float32)) >= 0)
        t_start = start
        if outside.size:  # the coarse guess was past the surface here: fall back to the safe march
            t_start = start.copy()
            t_start[outside] = march_bound_planar(surface.bound, surface.envelope_lipschitz, origin,
                                                  dirs_t[:, outside], t_max[outside])
    return trace_planar(surface.field, surface.lipschitz, origin, dirs_t, t_max, min_step=0.25,
                        min_step_per_mm=min_step_per_mm, t_start=t_start)


def _coarse_pass(surface, origin: np.ndarray, world_t: np.ndarray, t_max: np.ndarray, lens: np.ndarray,
                 coarse: int, min_step_per_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trace every ``coarse``-th pixel (and the last row / column) from the camera and derive, per pixel:

    Args:
        world_t: float64 [3, H*W] planar world ray directions; t_max: float64 [H*W] ray length limits.
        lens: bool [H, W].
    Returns:
        guess: float64 [H*W] bilinear interpolation of the four enclosing coarse hits (ray length, mm).
        smooth: bool [H*W] the four enclosing coarse rays all hit and agree within 10 % (and the pixel is in the
            lens).
        t_start: float64 [H*W] 92 % of the nearest coarse hit around the pixel (minus 0.3 mm): where to start
            marching.
    """
    h, w = lens.shape
    rows = np.unique(np.r_[np.arange(0, h, coarse), h - 1])
    cols = np.unique(np.r_[np.arange(0, w, coarse), w - 1])
    sub = (rows[:, None] * w + cols[None, :]).reshape(-1)
    sub_lens = lens.reshape(-1)[sub]
    sel = sub[sub_lens]
    t_c = np.zeros(len(sub))  # outside the lens: 0, so neighbours start at the camera
    t_c[sub_lens] = np.minimum(_first_hits(surface, origin, world_t.take(sel, axis=1), t_max[sel],
                                           min_step_per_mm), t_max[sel])
    hit_c = (sub_lens & (t_c < t_max[sub])).reshape(len(rows), len(cols))
    t_c = t_c.reshape(len(rows), len(cols))
    # each pixel's enclosing coarse cell: rows ci, ci1 and columns cj, cj1 with fractions fi, fj
    ci = np.searchsorted(rows, np.arange(h), side="right") - 1
    cj = np.searchsorted(cols, np.arange(w), side="right") - 1
    ci1, cj1 = np.minimum(ci + 1, len(rows) - 1), np.minimum(cj + 1, len(cols) - 1)
    fi = ((np.arange(h) - rows[ci]) / np.maximum(rows[ci1] - rows[ci], 1))[:, None]
    fj = ((np.arange(w) - cols[cj]) / np.maximum(cols[cj1] - cols[cj], 1))[None, :]
    # separable: first along the columns on the coarse rows ([rows, W]), then along the rows ([H, W])
    left, right = t_c[:, cj], t_c[:, cj1]
    along = (1 - fj) * left + fj * right
    guess = (1 - fi) * along[ci] + fi * along[ci1]
    low, high = np.minimum(left, right), np.maximum(left, right)
    lo_c, hi_c = np.minimum(low[ci], low[ci1]), np.maximum(high[ci], high[ci1])
    both = hit_c[:, cj] & hit_c[:, cj1]
    smooth = both[ci] & both[ci1] & (hi_c < 1.1 * lo_c) & lens
    eroded = cv2.erode(t_c.astype(np.float32), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    # each pixel's enclosing coarse cell is (ci, ci + 1); the eroded value at ci covers ci - 1 .. ci + 1
    near = np.minimum(eroded[ci][:, cj], eroded[ci1][:, cj1]).astype(np.float64)
    t_start = np.maximum(0.92 * near - 0.3, 0.0)
    return guess.reshape(-1), smooth.reshape(-1), t_start.reshape(-1)


#: smallest march step (mm) when the far side of a silhouette is traced again: a fold's rim at least this thick along
#: the ray is found
EDGE_STEP_MM = 0.1
#: a pixel whose hit lies more than this factor beyond a neighbour's is on the far side of a silhouette
EDGE_RATIO = 1.02


def _retrace_edges(surface, origin: np.ndarray, world_t: np.ndarray, t: np.ndarray, t_max: np.ndarray,
                   lens: np.ndarray) -> np.ndarray:
    """Trace again, from the camera with a smallest step of :data:`EDGE_STEP_MM` that never grows, the pixels on
    the far side of a silhouette (their hit beyond :data:`EDGE_RATIO` times a neighbour's, or none beside one):
    the first pass lets its smallest step grow along rays that graze a wall, and it and the coarse bracket can
    then pass the thin rim of a fold in front of the wall behind. Returns ``t`` (float64 [H*W] ray lengths, mm)
    with the nearer hits found."""
    h, w = lens.shape
    grid = np.where(np.isfinite(t), t, np.float32(3e38)).astype(np.float32).reshape(h, w)
    nearest = cv2.erode(grid, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE).reshape(-1)
    edge = np.flatnonzero(lens.reshape(-1) & (t > EDGE_RATIO * nearest.astype(np.float64)))
    if edge.size == 0:
        return t
    dirs_t = np.ascontiguousarray(world_t.take(edge, axis=1))
    start = march_bound_planar(surface.bound, surface.envelope_lipschitz, origin, dirs_t, t_max[edge])
    again = trace_planar(surface.field, surface.lipschitz, origin, dirs_t, np.minimum(t[edge], t_max[edge]),
                         min_step=EDGE_STEP_MM, t_start=start, grow=False, max_iter=20000)
    logger.debug("silhouettes: %d rays traced again, %d nearer hits", edge.size, int((again < t[edge]).sum()))
    out = t.copy()
    out[edge] = np.minimum(t[edge], again)
    return out


def cast(surface, pose: np.ndarray, dirs: np.ndarray, lens: np.ndarray, max_depth: float, instrument=None,
         min_step_per_mm: float = 0.0, coarse: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact geometry of a camera at ``pose`` looking at ``surface`` (and an optional closed-form ``instrument``).

    Coarse-to-fine: every ``coarse``-th pixel is traced from the camera first. Where the four enclosing coarse
    hits agree within 10 %, a pixel brackets its hit in [0.96, 1.04] x their bilinear interpolation (two field
    evaluations) and refines it; every other pixel sphere-traces from 92 % of the nearest surrounding coarse hit
    (verified to be in free space, else from the camera). Both can pass the thin rim of a fold that a ray grazes
    in front of the wall behind it (the march's smallest step grows along grazing rays; a bracket may hold two
    roots), so the far side of every silhouette is traced again with a fixed small step (:func:`_retrace_edges`;
    measured against an independent float64 ray cast sampled every 0.002–0.01 mm: 310 wrong pixels in 8 frames
    before it, at most 1 in 81,920 after, at 1.6–1.75× the geometry's cost). ``coarse=1`` traces every ray from
    the camera.

    Args:
        surface: object with ``field``, ``lipschitz``, ``bound``, ``envelope_lipschitz`` (``TubeSurface``,
            ``HeightfieldSurface``).
        pose: float64 [4, 4] camera-to-world, mm.
        dirs: float64 [H, W, 3] unit camera-frame ray directions (``camera_rays``).
        lens: bool [H, W] pixels that see through the lens.
        max_depth: rays are searched up to this z-depth, mm.
        instrument: optional object with ``intersect(origin, dirs) -> ray lengths``.
    Returns:
        depth: float64 [H, W] z-depth in mm (``inf`` where nothing is hit).
        ray_length: float64 [H, W] mm.
        on_instrument: bool [H, W].
    """
    pose = np.asarray(pose, np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"pose must be a 4x4 camera-to-world matrix, got shape {pose.shape}")
    h, w = lens.shape
    rot, origin = pose[:3, :3], pose[:3, 3]
    world = rotate(rot, dirs).reshape(-1, 3)
    world_t = world.T  # planar view; subsets are gathered into contiguous [3, n] arrays
    t_max = (max_depth / dirs[..., 2]).reshape(-1)
    in_lens = lens.reshape(-1)
    t = np.full(h * w, np.inf)
    if coarse <= 1:
        idx = np.flatnonzero(in_lens)
        t[idx] = _first_hits(surface, origin, world_t.take(idx, axis=1), t_max[idx], min_step_per_mm)
    else:
        guess, smooth, t_start = _coarse_pass(surface, origin, world_t, t_max, lens, coarse, min_step_per_mm)
        # smooth regions: bracket the hit around the coarse guess (2 evaluations) and refine; a guess that does
        # not bracket a sign change (or starts inside tissue) goes through the full march below
        cand = np.flatnonzero(smooth)
        g = guess[cand]
        lo = np.maximum(0.96 * g - 0.05, 0.0)
        hi = np.minimum(1.04 * g + 0.05, t_max[cand])
        d_cand = world_t.take(cand, axis=1)
        o32, d32 = origin.astype(np.float32), d_cand.astype(np.float32)
        f_lo = surface.field(ray_points(o32, d32, lo.astype(np.float32)))
        f_hi = surface.field(ray_points(o32, d32, hi.astype(np.float32)))
        ok = np.flatnonzero((f_lo < 0) & (f_hi >= 0))
        done = cand[ok]
        t[done] = refine(surface.field, origin, d_cand.take(ok, axis=1), lo[ok], hi[ok], 1e-5, f_lo[ok],
                         f_hi[ok])
        rest = in_lens.copy()
        rest[done] = False
        rest = np.flatnonzero(rest)
        logger.debug("coarse-to-fine: %d of %d rays bracketed from the coarse guess", len(done),
                     len(done) + len(rest))
        t[rest] = _first_hits(surface, origin, world_t.take(rest, axis=1), t_max[rest], min_step_per_mm,
                              t_start[rest])
    t = _retrace_edges(surface, origin, world_t, t, t_max, lens)
    tool = np.zeros(h * w, bool)
    if instrument is not None:
        idx = np.flatnonzero(in_lens)
        t_tool = instrument.intersect(origin, world[idx])
        on_tool = (t_tool < t[idx]) & (t_tool <= t_max[idx])
        tool[idx] = on_tool
        t[idx[on_tool]] = t_tool[on_tool]
    length = t.reshape(h, w)
    return length * dirs[..., 2], length, tool.reshape(h, w)
