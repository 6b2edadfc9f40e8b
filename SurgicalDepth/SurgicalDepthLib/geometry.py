"""Depth maps ↔ 3D points (numpy, vectorised): back-projection, rigid transforms, grid triangles, point filters.

Their VTK form (``to_polydata``, ``depth_to_mesh``) is :mod:`SurgicalDepthLib.polydata`.

Camera frame: x right, y down, z forward; pixel (u, v) at integer coordinates is the pixel centre; depth is z
(along the optical axis, not the ray length). Points come out in the depth map's unit (mm when metric).
Invalid depth — NaN, ±inf or ``<= 0`` — is never turned into a point: such pixels are masked out.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .camera import Intrinsics, camera_ray_mask, camera_rays


def check_depth_map(depth: Any, intrinsics: Intrinsics, name: str = "depth") -> np.ndarray:
    """``depth`` as an array after checking it is a numeric ``[H, W]`` map of the camera's size."""
    if not isinstance(intrinsics, Intrinsics):
        raise TypeError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"{name} must be a 2D array [H, W], got shape {depth.shape}")
    if not np.issubdtype(depth.dtype, np.floating) and not np.issubdtype(depth.dtype, np.integer):
        raise TypeError(f"{name} must be a numeric array, got dtype {depth.dtype}")
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(f"{name} shape {depth.shape[0]}x{depth.shape[1]} (HxW) does not match the intrinsics size "
                         f"{intrinsics.height}x{intrinsics.width} (HxW); use intrinsics.scaled(width, height)")
    return depth


def restrict_to_mask(valid: np.ndarray, mask: Any, name: str) -> np.ndarray:
    """``valid &= mask`` for an optional ``mask`` (any array of ``valid``'s shape, read as bool); returns ``valid``.

    ``name`` is the array whose shape ``valid`` has, for the error when ``mask``'s shape differs."""
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != valid.shape:
            raise ValueError(f"mask shape {mask.shape} does not match {name} shape {valid.shape}")
        valid &= mask.astype(bool, copy=False)
    return valid


def valid_depth_mask(depth: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """bool ``[H, W]``: finite, ``> 0`` and (when given) inside ``mask``."""
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    return restrict_to_mask(valid, mask, "depth")


def float32_depth(depth: np.ndarray) -> np.ndarray:
    """``depth`` as float32 (shared when it is already), the precision of the points: a float64 depth beyond float32's
    range becomes inf, a positive one below its smallest value 0, both invalid (no overflow warning)."""
    with np.errstate(over="ignore", under="ignore"):
        return np.asarray(depth).astype(np.float32, copy=False)


def point_mask(depth: np.ndarray, intrinsics: Intrinsics, mask: np.ndarray | None = None) -> np.ndarray:
    """bool ``[H, W]``: the pixels :func:`backproject` turns into points — a valid depth (:func:`valid_depth_mask`)
    once in float32 (as the points are), inside ``mask`` (when given), and a ray through the lens (a distorted
    camera's pixels beyond its model's range have none: ``camera.pixel_rays`` gives NaN). Callers pick each point's
    colour and scalars with it."""
    # judged in float32, like the points: a float64 1e39 or 1e-300 would be valid here and no point there
    valid = valid_depth_mask(float32_depth(depth), mask)
    has_ray = camera_ray_mask(intrinsics)
    if has_ray is not None and has_ray.shape == valid.shape:  # another size: backproject names both
        valid &= has_ray
    return valid


def backproject(depth: np.ndarray, intrinsics: Intrinsics, mask: np.ndarray | None = None) -> np.ndarray:
    """3D points of the valid pixels, in the camera frame.

    Args:
        depth: ``[H, W]`` z-depth (any unit; mm when metric). NaN, ±inf and ``<= 0`` pixels are skipped, and so
            are pixels without a ray through the lens (:func:`point_mask` selects the same pixels).
        intrinsics: camera for exactly ``W × H`` (distortion handled through undistorted pixel rays).
        mask: optional bool ``[H, W]``; only True pixels are used.

    Returns:
        float32 ``[N, 3]`` points ``z · (x, y, 1)`` with (x, y) the unit-z ray of the pixel, in row-major pixel
        order (v, then u).

    Raises:
        ValueError: shape mismatch (names both sizes), or ``"no valid depth pixels"`` when nothing is left.
    """
    depth = check_depth_map(depth, intrinsics)
    H, W = depth.shape
    z = float32_depth(depth)
    valid = point_mask(z, intrinsics, mask)
    # compute every pixel with broadcast writes, then compress the valid rows once: faster than gathering
    # per-pixel indices (invalid pixels give NaN/inf rows that are discarded)
    pts = np.empty((H, W, 3), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        if intrinsics.distortion is None:  # separable rays: two 1D tables
            xs = ((np.arange(W) - intrinsics.cx) / intrinsics.fx).astype(np.float32)
            ys = ((np.arange(H) - intrinsics.cy) / intrinsics.fy).astype(np.float32)
            np.multiply(z, xs[None, :], out=pts[..., 0])
            np.multiply(z, ys[:, None], out=pts[..., 1])
        else:
            rays = camera_rays(intrinsics)
            np.multiply(z, rays[..., 0], out=pts[..., 0], casting="unsafe")
            np.multiply(z, rays[..., 1], out=pts[..., 1], casting="unsafe")
    pts[..., 2] = z
    pts = pts.reshape(-1, 3)
    if not valid.all():
        # boolean selection of 12-byte records (one void item per point) is much faster than of [N, 3] rows
        pts = pts.view(np.dtype((np.void, 12))).ravel()[valid.ravel()].view(np.float32).reshape(-1, 3)
    if pts.shape[0] == 0:
        raise ValueError(f"no valid depth pixels: all {H * W} pixels of depth are NaN/inf/<=0 or outside the mask")
    return pts


def check_rigid(pose: Any, name: str = "pose", atol: float = 1e-5) -> np.ndarray:
    """float64 4×4 ``pose`` after checking it is a rigid transform (R^T R = I, det R = 1, last row 0 0 0 1)."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 camera-to-world matrix, got shape {pose.shape}")
    if not np.isfinite(pose).all():
        raise ValueError(f"{name} is not rigid: it contains NaN/inf")
    if not np.allclose(pose[3], [0, 0, 0, 1], atol=1e-9):
        raise ValueError(f"{name} is not rigid: last row must be [0, 0, 0, 1], got {pose[3].tolist()}")
    R = pose[:3, :3]
    err = np.abs(R.T @ R - np.eye(3)).max()
    if err > atol:
        raise ValueError(f"{name} is not rigid: R^T R differs from identity by {err:.3g} (tolerance {atol})")
    det = np.linalg.det(R)
    if abs(det - 1) > atol:
        raise ValueError(f"{name} is not rigid: det(R) = {det:.6g}, expected 1 (a reflection or scaling)")
    return pose


def transform_points(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """``[N, 3]`` points mapped by a 4×4 rigid transform (``R p + t``), same dtype as ``points``."""
    pose = check_rigid(pose)
    pts = np.asarray(points)
    return (pts @ pose[:3, :3].T.astype(pts.dtype) + pose[:3, 3].astype(pts.dtype)).astype(pts.dtype, copy=False)


def check_points(points: Any) -> np.ndarray:
    """float32 C-contiguous ``[N, 3]`` ``points`` (shared when already so), after checking the shape."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {points.shape}")
    return np.ascontiguousarray(points, dtype=np.float32)


def check_colors(colors: Any, n: int) -> np.ndarray:
    """uint8 ``[n, 3]`` RGB (other dtypes rounded and clipped to 0..255); floats all in [0, 1] are refused."""
    colors = np.asarray(colors)
    if colors.shape != (n, 3):
        raise ValueError(f"colors must be [N, 3] with N={n} (one RGB per point), got shape {colors.shape}")
    if colors.dtype != np.uint8:
        if np.issubdtype(colors.dtype, np.floating) and colors.size and colors.max() <= 1.0:
            raise ValueError("colors must be uint8 0..255; got floats in [0, 1] — multiply by 255 and cast first")
        colors = np.clip(np.rint(colors), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(colors)


def grid_triangles(valid: np.ndarray, depth: np.ndarray | None = None,
                   max_depth_jump: float | None = None) -> np.ndarray:
    """Triangles of the pixel grid, as flat pixel indices ``int64 [T, 3]``.

    Each 2×2 pixel block (a b / c d) gives triangles (a, c, b) and (b, c, d) — wound so that normals point towards
    the camera. A triangle is kept when its three pixels are valid and, if ``max_depth_jump`` is given, its
    relative depth jump ``(max z − min z) / min z`` is ``<= max_depth_jump``.
    """
    H, W = valid.shape
    idx = np.arange(H * W, dtype=np.int64).reshape(H, W)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    tris = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
    flat_valid = valid.ravel()
    keep = flat_valid[tris].all(axis=1)
    tris = tris[keep]
    if max_depth_jump is not None and depth is not None:
        z = depth.ravel()[tris]
        zmin, zmax = z.min(axis=1), z.max(axis=1)
        tris = tris[(zmax - zmin) <= max_depth_jump * zmin]
    return tris


def voxel_downsample(points: np.ndarray, voxel_size: float,
                     colors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Average the points (and colours) falling in each cube of side ``voxel_size`` (points' unit).

    Returns:
        ``(points float32 [M, 3], colors uint8 [M, 3] or None)``, one entry per occupied voxel, ordered by voxel.
    """
    points = check_points(points)
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size!r}")
    if colors is not None:
        colors = check_colors(colors, points.shape[0])
    if points.shape[0] == 0:
        return points, colors
    keys = np.floor(points / voxel_size).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    m = counts.size
    out = np.empty((m, 3), dtype=np.float64)
    for k in range(3):
        out[:, k] = np.bincount(inverse, weights=points[:, k], minlength=m)
    out /= counts[:, None]
    out_colors = None
    if colors is not None:
        out_colors = np.empty((m, 3), dtype=np.float64)
        for k in range(3):
            out_colors[:, k] = np.bincount(inverse, weights=colors[:, k], minlength=m)
        out_colors = np.clip(np.rint(out_colors / counts[:, None]), 0, 255).astype(np.uint8)
    return out.astype(np.float32), out_colors


def remove_outliers(points: np.ndarray, nb_neighbors: int = 16,
                    std_ratio: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Statistical outlier removal (as in PCL's StatisticalOutlierRemoval / Open3D).

    For each point the mean distance ``d_i`` to its ``nb_neighbors`` nearest neighbours is computed
    (``scipy.spatial.cKDTree``); points with ``d_i > mean(d) + std_ratio · std(d)`` are removed.

    Returns:
        ``(inlier points float32 [M, 3], keep bool [N])`` — use ``keep`` to filter colours or other arrays.
    """
    from scipy.spatial import cKDTree

    points = check_points(points)
    if int(nb_neighbors) < 1:
        raise ValueError(f"nb_neighbors must be >= 1, got {nb_neighbors!r}")
    if not std_ratio > 0:
        raise ValueError(f"std_ratio must be > 0, got {std_ratio!r}")
    n = points.shape[0]
    if n <= nb_neighbors:
        raise ValueError(f"remove_outliers needs more than nb_neighbors={nb_neighbors} points, got {n}")
    dist, _ = cKDTree(points).query(points, k=int(nb_neighbors) + 1, workers=-1)
    mean_d = dist[:, 1:].mean(axis=1)  # column 0 is the point itself
    keep = mean_d <= mean_d.mean() + std_ratio * mean_d.std()
    return points[keep], keep
