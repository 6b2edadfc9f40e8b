"""Depth maps → 3D points and meshes (numpy, vectorised) and their VTK ``vtkPolyData`` form.

Camera frame: x right, y down, z forward; pixel (u, v) at integer coordinates is the pixel centre; depth is z
(along the optical axis, not the ray length). Points come out in the depth map's unit (mm when metric).
Invalid depth — NaN, ±inf or ``<= 0`` — is never turned into a point: such pixels are masked out.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .camera import Intrinsics, pixel_rays

logger = logging.getLogger(__name__)


def _check_depth(depth: Any, intrinsics: Intrinsics, name: str = "depth") -> np.ndarray:
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


def backproject(depth: np.ndarray, intrinsics: Intrinsics, mask: np.ndarray | None = None) -> np.ndarray:
    """3D points of the valid pixels, in the camera frame.

    Args:
        depth: ``[H, W]`` z-depth (any unit; mm when metric). NaN, ±inf and ``<= 0`` pixels are skipped.
        intrinsics: camera for exactly ``W × H`` (distortion handled through undistorted pixel rays).
        mask: optional bool ``[H, W]``; only True pixels are used.

    Returns:
        float32 ``[N, 3]`` points ``z · (x, y, 1)`` with (x, y) the unit-z ray of the pixel, in row-major pixel
        order (v, then u).

    Raises:
        ValueError: shape mismatch (names both sizes), or ``"no valid depth pixels"`` when nothing is left.
    """
    depth = _check_depth(depth, intrinsics)
    H, W = depth.shape
    z = depth.astype(np.float32, copy=False)
    valid = valid_depth_mask(z, mask)
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
            rays = pixel_rays(intrinsics)
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


def _vtk_array(arr: np.ndarray, name: str | None = None, array_type: int | None = None) -> Any:
    """Zero-copy numpy → vtkDataArray (the VTK array keeps a reference to ``arr``)."""
    from vtkmodules.util import numpy_support

    arr = np.ascontiguousarray(arr)
    vtk_arr = numpy_support.numpy_to_vtk(arr, deep=False, array_type=array_type)
    if name is not None:
        vtk_arr.SetName(name)
    return vtk_arr


def _cell_array(connectivity: np.ndarray, cell_size: int) -> Any:
    """vtkCellArray of ``len(connectivity) // cell_size`` cells of ``cell_size`` points, built without a loop."""
    from vtkmodules.util.vtkConstants import VTK_ID_TYPE
    from vtkmodules.vtkCommonDataModel import vtkCellArray

    id_dtype = np.int64 if np.dtype(np.intp).itemsize == 8 else np.int32
    conn = np.ascontiguousarray(connectivity, dtype=id_dtype).ravel()
    offsets = np.arange(0, conn.size + 1, cell_size, dtype=id_dtype)
    cells = vtkCellArray()
    cells.SetData(_vtk_array(offsets, array_type=VTK_ID_TYPE), _vtk_array(conn, array_type=VTK_ID_TYPE))
    return cells


def _check_points(points: Any) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {points.shape}")
    return np.ascontiguousarray(points, dtype=np.float32)


def _check_colors(colors: Any, n: int) -> np.ndarray:
    colors = np.asarray(colors)
    if colors.shape != (n, 3):
        raise ValueError(f"colors must be [N, 3] with N={n} (one RGB per point), got shape {colors.shape}")
    if colors.dtype != np.uint8:
        if np.issubdtype(colors.dtype, np.floating) and colors.size and colors.max() <= 1.0:
            raise ValueError("colors must be uint8 0..255; got floats in [0, 1] — multiply by 255 and cast first")
        colors = np.clip(np.rint(colors), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(colors)


def _attach_arrays(poly: Any, points: np.ndarray, colors: np.ndarray | None, scalars: np.ndarray | None) -> None:
    n = points.shape[0]
    pd = poly.GetPointData()
    if colors is not None:
        pd.AddArray(_vtk_array(_check_colors(colors, n), "RGB"))
        pd.SetActiveScalars("RGB")
    depth = points[:, 2] if scalars is None else np.asarray(scalars, dtype=np.float32).ravel()
    if depth.shape != (n,):
        raise ValueError(f"scalars must have one value per point ({n}), got shape {np.shape(scalars)}")
    pd.AddArray(_vtk_array(np.ascontiguousarray(depth, dtype=np.float32), "Depth"))


def to_polydata(points: np.ndarray, colors: np.ndarray | None = None,
                scalars: np.ndarray | None = None) -> Any:
    """A ``vtkPolyData`` point cloud (one vertex cell per point) sharing memory with the inputs.

    Args:
        points: ``[N, 3]`` (float32 is shared, other dtypes converted once).
        colors: optional uint8 ``[N, 3]`` RGB → point array ``"RGB"`` (active scalars).
        scalars: optional ``[N]`` values for the float32 point array ``"Depth"``; default: the points' z.
    """
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    points = _check_points(points)
    vpts = vtkPoints()
    vpts.SetData(_vtk_array(points))
    poly = vtkPolyData()
    poly.SetPoints(vpts)
    id_dtype = np.int64 if np.dtype(np.intp).itemsize == 8 else np.int32
    poly.SetVerts(_cell_array(np.arange(points.shape[0], dtype=id_dtype), 1))
    _attach_arrays(poly, points, colors, scalars)
    return poly


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


def depth_to_mesh(depth: np.ndarray, intrinsics: Intrinsics, rgb: np.ndarray | None = None,
                  max_depth_jump: float = 0.05) -> Any:
    """Triangle mesh of a depth map (one vertex per valid pixel) as ``vtkPolyData``.

    Args:
        depth: ``[H, W]`` z-depth; NaN/inf/``<= 0`` pixels get no vertex.
        intrinsics: camera for exactly ``W × H``.
        rgb: optional uint8 ``[H, W, 3]`` → point array ``"RGB"``.
        max_depth_jump: a grid triangle is dropped when its *relative* depth jump ``|Δz| / z``
            (``(max z − min z) / min z`` over its corners) exceeds this, so occlusion edges are not bridged.

    Returns:
        ``vtkPolyData`` with triangles, point normals (``vtkPolyDataNormals``, named "Normals"), ``"RGB"``
        (when given) and float32 ``"Depth"``.
    """
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkPolyData
    from vtkmodules.vtkFiltersCore import vtkPolyDataNormals

    depth = _check_depth(depth, intrinsics)
    if not max_depth_jump > 0:
        raise ValueError(f"max_depth_jump must be > 0 (relative |dz|/z), got {max_depth_jump!r}")
    valid = valid_depth_mask(depth)
    points = backproject(depth, intrinsics)  # row-major order of the valid pixels
    remap = np.full(depth.size, -1, dtype=np.int64)
    remap[np.flatnonzero(valid)] = np.arange(points.shape[0])
    tris = remap[grid_triangles(valid, depth.astype(np.float32, copy=False), max_depth_jump)]
    colors = None
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != depth.shape + (3,):
            raise ValueError(f"rgb must be [H, W, 3] = {depth.shape + (3,)}, got shape {rgb.shape}")
        colors = rgb[valid]
    vpts = vtkPoints()
    vpts.SetData(_vtk_array(points))
    poly = vtkPolyData()
    poly.SetPoints(vpts)
    poly.SetPolys(_cell_array(tris, 3))
    _attach_arrays(poly, points, colors, None)
    normals = vtkPolyDataNormals()
    normals.SetInputData(poly)
    normals.SetSplitting(False)  # keep one vertex per pixel
    normals.SetConsistency(False)  # grid winding is already consistent
    normals.SetAutoOrientNormals(False)
    normals.SetComputeCellNormals(False)
    normals.Update()
    out = normals.GetOutput()
    logger.debug("depth_to_mesh: %d vertices, %d triangles", out.GetNumberOfPoints(), out.GetNumberOfCells())
    return out


def voxel_downsample(points: np.ndarray, voxel_size: float,
                     colors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Average the points (and colours) falling in each cube of side ``voxel_size`` (points' unit).

    Returns:
        ``(points float32 [M, 3], colors uint8 [M, 3] or None)``, one entry per occupied voxel, ordered by voxel.
    """
    points = _check_points(points)
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size!r}")
    if colors is not None:
        colors = _check_colors(colors, points.shape[0])
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

    points = _check_points(points)
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
