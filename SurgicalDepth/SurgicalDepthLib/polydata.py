"""numpy → VTK: data arrays, cell arrays, and point clouds and depth meshes as ``vtkPolyData``.

The numpy side (back-projection, grid triangles, checks) is :mod:`SurgicalDepthLib.geometry`; this module only
builds VTK objects, sharing memory with the numpy arrays where VTK allows it. VTK is imported when a function runs.

Point data of every polydata made here: ``"RGB"`` (uint8 ``[N, 3]``, active scalars, when colours are given) and
``"Depth"`` (float32 ``[N]``, the points' z unless other scalars are given).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .camera import Intrinsics
from .geometry import (backproject, check_colors, check_depth_map, check_points, float32_depth, grid_triangles,
                       point_mask)

logger = logging.getLogger(__name__)


def vtk_data_array(arr: np.ndarray, name: str | None = None, array_type: int | None = None) -> Any:
    """Zero-copy numpy → ``vtkDataArray`` (the VTK array keeps a reference to ``arr``; a non-contiguous ``arr``
    is copied once). ``array_type``: a VTK type constant (default: from the dtype)."""
    from vtkmodules.util import numpy_support

    arr = np.ascontiguousarray(arr)
    vtk_arr = numpy_support.numpy_to_vtk(arr, deep=False, array_type=array_type)
    if name is not None:
        vtk_arr.SetName(name)
    return vtk_arr


def _id_dtype() -> type:
    """numpy dtype of ``vtkIdType`` (64-bit ids on 64-bit platforms)."""
    return np.int64 if np.dtype(np.intp).itemsize == 8 else np.int32


def vtk_cell_array(connectivity: np.ndarray, cell_size: int) -> Any:
    """``vtkCellArray`` of ``len(connectivity) // cell_size`` cells of ``cell_size`` points each (point ids
    ``[M, cell_size]`` or flat), built without a Python loop."""
    from vtkmodules.util.vtkConstants import VTK_ID_TYPE
    from vtkmodules.vtkCommonDataModel import vtkCellArray

    id_dtype = _id_dtype()
    conn = np.ascontiguousarray(connectivity, dtype=id_dtype).ravel()
    offsets = np.arange(0, conn.size + 1, cell_size, dtype=id_dtype)
    cells = vtkCellArray()
    cells.SetData(vtk_data_array(offsets, array_type=VTK_ID_TYPE), vtk_data_array(conn, array_type=VTK_ID_TYPE))
    return cells


def _points_polydata(points: np.ndarray, colors: np.ndarray | None, scalars: np.ndarray | None) -> Any:
    """``vtkPolyData`` with ``points`` (float32 ``[N, 3]``, shared) and the ``"RGB"``/``"Depth"`` point arrays."""
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    n = points.shape[0]
    vpts = vtkPoints()
    vpts.SetData(vtk_data_array(points))
    poly = vtkPolyData()
    poly.SetPoints(vpts)
    pd = poly.GetPointData()
    if colors is not None:
        pd.AddArray(vtk_data_array(check_colors(colors, n), "RGB"))
        pd.SetActiveScalars("RGB")
    depth = points[:, 2] if scalars is None else np.asarray(scalars, dtype=np.float32).ravel()
    if depth.shape != (n,):
        raise ValueError(f"scalars must have one value per point ({n}), got shape {np.shape(scalars)}")
    pd.AddArray(vtk_data_array(np.ascontiguousarray(depth, dtype=np.float32), "Depth"))
    return poly


def to_polydata(points: np.ndarray, colors: np.ndarray | None = None,
                scalars: np.ndarray | None = None) -> Any:
    """A ``vtkPolyData`` point cloud (one vertex cell per point) sharing memory with the inputs.

    Args:
        points: ``[N, 3]`` (float32 is shared, other dtypes converted once).
        colors: optional uint8 ``[N, 3]`` RGB → point array ``"RGB"`` (active scalars).
        scalars: optional ``[N]`` values for the float32 point array ``"Depth"``; default: the points' z.
    """
    points = check_points(points)
    poly = _points_polydata(points, colors, scalars)
    poly.SetVerts(vtk_cell_array(np.arange(points.shape[0], dtype=_id_dtype()), 1))
    return poly


def depth_to_mesh(depth: np.ndarray, intrinsics: Intrinsics, rgb: np.ndarray | None = None,
                  max_depth_jump: float = 0.05) -> Any:
    """Triangle mesh of a depth map (one vertex per valid pixel) as ``vtkPolyData``.

    Args:
        depth: ``[H, W]`` z-depth; NaN/inf/``<= 0`` pixels (and pixels without a ray through the lens) get no
            vertex.
        intrinsics: camera for exactly ``W × H``.
        rgb: optional uint8 ``[H, W, 3]`` → point array ``"RGB"``.
        max_depth_jump: a grid triangle is dropped when its *relative* depth jump ``|Δz| / z``
            (``(max z − min z) / min z`` over its corners) exceeds this, so occlusion edges are not bridged.

    Returns:
        ``vtkPolyData`` with triangles, point normals (``vtkPolyDataNormals``, named "Normals"), ``"RGB"``
        (when given) and float32 ``"Depth"``.
    """
    from vtkmodules.vtkFiltersCore import vtkPolyDataNormals

    depth = check_depth_map(depth, intrinsics)
    if not max_depth_jump > 0:
        raise ValueError(f"max_depth_jump must be > 0 (relative |dz|/z), got {max_depth_jump!r}")
    valid = point_mask(depth, intrinsics)
    points = backproject(depth, intrinsics)  # row-major order of the valid pixels
    remap = np.full(depth.size, -1, dtype=np.int64)
    remap[np.flatnonzero(valid)] = np.arange(points.shape[0])
    tris = remap[grid_triangles(valid, float32_depth(depth), max_depth_jump)]
    colors = None
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != depth.shape + (3,):
            raise ValueError(f"rgb must be [H, W, 3] = {depth.shape + (3,)}, got shape {rgb.shape}")
        colors = rgb[valid]
    poly = _points_polydata(points, colors, None)
    poly.SetPolys(vtk_cell_array(tris, 3))
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
