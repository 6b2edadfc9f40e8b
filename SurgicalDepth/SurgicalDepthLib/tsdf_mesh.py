"""Surface of a TSDF grid: the zero level set as ``vtkPolyData`` (``vtkFlyingEdges3D``), unobserved edges dropped."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def grid_to_mesh(tsdf: np.ndarray, weight: np.ndarray, color: np.ndarray, origin: np.ndarray,
                 voxel_size: float) -> Any:
    """Zero level set of a TSDF grid ``[X, Y, Z]`` (voxel (i, j, k) at ``origin + (i, j, k)·voxel_size``).

    ``vtkFlyingEdges3D`` on the grid as ``vtkImageData``; vertices on an edge touching a weight-0 voxel are
    dropped with their triangles; per-vertex colour is the linear interpolation of ``color`` along the edge.
    """
    from scipy.ndimage import map_coordinates
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
    from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D

    from .polydata import vtk_cell_array, vtk_data_array

    dims = tsdf.shape
    image = vtkImageData()
    image.SetDimensions(*dims)
    image.SetOrigin(*(float(o) for o in origin))
    image.SetSpacing(voxel_size, voxel_size, voxel_size)
    # VTK orders points x fastest: the [X, Y, Z] grid transposed to [Z, Y, X] in C order
    values = np.ascontiguousarray(np.where(weight > 0, tsdf, 1.0).transpose(2, 1, 0), dtype=np.float32).ravel()
    image.GetPointData().SetScalars(vtk_data_array(values))
    fe = vtkFlyingEdges3D()
    fe.SetInputData(image)
    fe.SetValue(0, 0.0)
    fe.SetComputeNormals(True)
    fe.SetComputeGradients(False)
    fe.SetComputeScalars(False)
    fe.Update()
    surf = fe.GetOutput()
    out = vtkPolyData()
    if surf.GetNumberOfPoints() == 0:
        logger.warning("grid_to_mesh: no zero crossing in the volume; returning an empty mesh")
        return out
    pts = vtk_to_numpy(surf.GetPoints().GetData()).astype(np.float64)
    normals = vtk_to_numpy(surf.GetPointData().GetNormals())
    tris = vtk_to_numpy(surf.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    f = (pts - origin) / voxel_size
    r = np.rint(f)
    on_grid = np.abs(f - r) < 1e-3
    i0 = np.where(on_grid, r, np.floor(f)).astype(np.int64)
    i1 = np.where(on_grid, r, np.ceil(f)).astype(np.int64)
    for a in (i0, i1):
        np.clip(a, 0, np.array(dims) - 1, out=a)
    ok = (weight[i0[:, 0], i0[:, 1], i0[:, 2]] > 0) & (weight[i1[:, 0], i1[:, 1], i1[:, 2]] > 0)
    tris = tris[ok[tris].all(axis=1)]
    used = np.unique(tris)
    remap = np.full(len(pts), -1, np.int64)
    remap[used] = np.arange(used.size)
    pts_out = np.ascontiguousarray(pts[used], dtype=np.float32)
    rgb = np.stack([map_coordinates(color[..., c], f[used].T, order=1, mode="nearest") for c in range(3)], 1)
    vpts = vtkPoints()
    vpts.SetData(vtk_data_array(pts_out))
    out.SetPoints(vpts)
    # flying edges winds triangles and orients normals towards decreasing values (behind the surface);
    # flip both so they face free space, like depth_to_mesh
    out.SetPolys(vtk_cell_array(remap[tris[:, ::-1]], 3))
    n_arr = vtk_data_array(np.ascontiguousarray(-normals[used], dtype=np.float32), "Normals")
    out.GetPointData().SetNormals(n_arr)
    out.GetPointData().AddArray(vtk_data_array(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB"))
    out.GetPointData().SetActiveScalars("RGB")
    return out
