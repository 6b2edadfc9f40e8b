"""Exact ground truth for the geometry tests and benchmarks: two spheres before a plane, seen from known poses.

z-depth per pixel comes in closed form from the ray–sphere and ray–plane intersections, so back-projected
points, fused surfaces and estimated poses can be checked against the true scene. Imported by the tests (this
folder is put on ``sys.path`` by Testing/conftest.py) and by Testing/benchmarks/bench_geometry.py.
"""
from __future__ import annotations

import numpy as np

SPHERES = [((0.0, 0.0, 80.0), 20.0), ((25.0, -15.0, 95.0), 12.0)]  # (centre, radius) mm, world frame
PLANE_Z = 120.0  # the plane z = 120 mm, world frame


def rigid(rx_deg: float, ry_deg: float, t, rz_deg: float = 0.0) -> np.ndarray:
    """Camera-to-world 4×4 with rotation ``Rz @ Ry @ Rx`` (degrees) and translation ``t`` (mm)."""
    ax, ay, az = np.radians([rx_deg, ry_deg, rz_deg])
    Rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    Ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    Rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Rz @ Ry @ Rx, t
    return T


def camera_rays(intr) -> np.ndarray:
    """Unit-z ray directions ``[H, W, 2]`` = (x/z, y/z): closed form for a pinhole camera (independent of the
    library), the library's undistortion for a distorted one."""
    if intr.distortion is None:
        u, v = np.meshgrid(np.arange(intr.width), np.arange(intr.height))
        return np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy], -1)
    return intr.undistorted_rays()


def trace(intr, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact z-depth float64 ``[H, W]`` mm (``inf`` where no surface is hit in front of the camera) and the surface
    label int64 ``[H, W]`` (0 plane or nothing, ``i`` = ``SPHERES[i - 1]``) for a camera at ``pose`` (cam→world)."""
    r = camera_rays(intr)
    d = np.concatenate([r, np.ones(r.shape[:2] + (1,))], -1) @ pose[:3, :3].T  # world rays with unit camera z:
    o = pose[:3, 3]  # the ray parameter equals the z-depth
    with np.errstate(divide="ignore", invalid="ignore"):
        best = (PLANE_Z - o[2]) / d[..., 2]
    best[~(best > 0)] = np.inf
    label = np.zeros(best.shape, np.int64)
    for i, (c, rad) in enumerate(SPHERES, 1):
        oc = o - np.asarray(c)
        a, b = np.einsum("hwk,hwk->hw", d, d), 2 * d @ oc
        disc = b * b - 4 * a * (oc @ oc - rad * rad)
        with np.errstate(invalid="ignore"):
            s = (-b - np.sqrt(disc)) / (2 * a)
        hit = (disc >= 0) & (s > 0) & (s < best)
        best[hit], label[hit] = s[hit], i
    return best, label


def true_distance(p: np.ndarray) -> np.ndarray:
    """Distance of world points ``[N, 3]`` (mm) to the nearest scene surface."""
    return np.min([np.abs(p[:, 2] - PLANE_Z)] + [np.abs(np.linalg.norm(p - c, axis=1) - r) for c, r in SPHERES], 0)


def scene_depth(intr, pose: np.ndarray = np.eye(4)) -> tuple[np.ndarray, np.ndarray]:
    """Exact z-depth [H, W] (mm, NaN where nothing is hit) and surface label (0 plane, 1.. spheres) for a camera
    at ``pose`` (cam→world)."""
    best, label = trace(intr, pose)
    best[~np.isfinite(best)] = np.nan
    return best, label


def surface_residual(points_world: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Distance of world points ``[N, 3]`` (mm) to the surface of their label (as :func:`scene_depth` gives)."""
    res = np.empty(len(points_world))
    on_plane = labels == 0
    res[on_plane] = points_world[on_plane, 2] - PLANE_Z
    for i, (c, rad) in enumerate(SPHERES, 1):
        sel = labels == i
        res[sel] = np.linalg.norm(points_world[sel] - np.asarray(c), axis=1) - rad
    return np.abs(res)


def near_camera_depth() -> tuple[np.ndarray, np.ndarray]:
    """The TSDF's awkward cases in one small frame: ``(depth float32 [36, 48], intrinsics (fx, fy, cx, cy))`` with
    two planes, depth nearer than a 0.6 truncation (visited blocks reach behind the camera), missing depth (0)
    beside it and NaN; fused at 0.25 voxels from the poses ``NEAR_POSES`` into ``NEAR_BOUNDS``."""
    depth = np.full((36, 48), 4.5, np.float32)
    depth[:, 30:] = np.linspace(3.0, 7.0, 36, dtype=np.float32)[:, None]
    depth[5:9, 3:11] = 0.0  # no depth
    depth[20:24, 30:40] = np.nan
    depth[12:36, 0:12] = 0.3  # nearer than the truncation
    depth[12:36, 12:26] = 0.0  # no depth beside them, within one truncation of the camera
    return depth, np.array([20.3, 19.7, 23.6, 17.2])


NEAR_POSES = [rigid(0.0, 0.0, (0.15, -0.1, 0.0)), rigid(4.0, -3.0, (-0.2, 0.25, 0.15))]
NEAR_BOUNDS = ((-6.0, -6.0, -3.0), (6.0, 6.0, 9.0))
