"""to_polydata / depth_to_mesh: zero-copy VTK arrays, vertex and triangle cells, normals, on analytic scenes."""
from __future__ import annotations

import gc

import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.polydata import depth_to_mesh, to_polydata

from analytic_scene import SPHERES, scene_depth, surface_residual

CAM = Intrinsics(300.0, 310.0, 159.2, 121.7, 320, 240)


def test_to_polydata_zero_copy_and_arrays():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(1000, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (1000, 3), dtype=np.uint8)
    poly = to_polydata(pts, colors)
    del colors
    gc.collect()
    vtk_pts = vtk_to_numpy(poly.GetPoints().GetData())
    assert np.shares_memory(vtk_pts, pts)  # zero-copy
    assert poly.GetNumberOfPoints() == 1000 and poly.GetNumberOfVerts() == 1000 and poly.GetNumberOfCells() == 1000
    rgb = poly.GetPointData().GetArray("RGB")
    assert rgb.GetNumberOfComponents() == 3 and vtk_to_numpy(rgb).dtype == np.uint8
    depth = vtk_to_numpy(poly.GetPointData().GetArray("Depth"))
    assert depth.dtype == np.float32 and np.array_equal(depth, pts[:, 2])
    cell = poly.GetCell(123)
    assert cell.GetNumberOfPoints() == 1 and cell.GetPointId(0) == 123
    poly2 = to_polydata(pts, scalars=np.arange(1000))
    assert vtk_to_numpy(poly2.GetPointData().GetArray("Depth"))[7] == 7.0
    assert poly2.GetPointData().GetArray("RGB") is None
    with pytest.raises(ValueError, match=r"colors must be \[N, 3\] with N=1000"):
        to_polydata(pts, np.zeros((999, 3), np.uint8))
    with pytest.raises(ValueError, match=r"points must be \[N, 3\], got shape \(10, 2\)"):
        to_polydata(np.zeros((10, 2)))


def test_depth_to_mesh_on_analytic_scene():
    depth, label = scene_depth(CAM)
    depth = depth.astype(np.float32)
    rgb = np.zeros(depth.shape + (3,), np.uint8)
    rgb[..., 0] = np.arange(320) % 256
    mesh = depth_to_mesh(depth, CAM, rgb)
    n = int(np.isfinite(depth).sum())
    assert mesh.GetNumberOfPoints() == n
    pts = vtk_to_numpy(mesh.GetPoints().GetData()).astype(np.float64)
    assert surface_residual(pts, label[np.isfinite(depth)]).max() <= 1e-3
    tris = vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    # no kept triangle bridges the sphere/plane occlusion edge: relative jump ≤ 5 %
    z = pts[tris, 2]
    assert ((z.max(1) - z.min(1)) / z.min(1)).max() <= 0.05
    # triangles joining different surfaces exist only where the surfaces touch — here none do
    lab = label[np.isfinite(depth)][tris]
    assert (lab.min(1) == lab.max(1)).all()
    full = 2 * 239 * 319
    assert 0.9 * full < len(tris) < full
    normals = vtk_to_numpy(mesh.GetPointData().GetNormals())
    plane_pts = (label[np.isfinite(depth)] == 0)
    # plane normals face the camera (−z); sphere normals are radial, pointing outwards towards the camera
    np.testing.assert_allclose(np.median(normals[plane_pts], axis=0), [0, 0, -1], atol=1e-6)
    sph = label[np.isfinite(depth)] == 1
    radial = (pts[sph] - SPHERES[0][0]) / SPHERES[0][1]
    assert np.median(np.einsum("nk,nk->n", normals[sph], radial)) > 0.999
    colors = vtk_to_numpy(mesh.GetPointData().GetArray("RGB"))
    np.testing.assert_array_equal(colors, rgb[np.isfinite(depth)])
    assert vtk_to_numpy(mesh.GetPointData().GetArray("Depth")).dtype == np.float32


def test_depth_to_mesh_threshold_is_relative():
    intr = Intrinsics(50.0, 50.0, 1.5, 1.5, 4, 4)
    depth = np.full((4, 4), 100.0, np.float32)
    depth[:, 2:] = 104.0  # 4 % jump between columns 1 and 2
    keep = depth_to_mesh(depth, intr, max_depth_jump=0.05)
    drop = depth_to_mesh(depth, intr, max_depth_jump=0.03)
    assert keep.GetNumberOfPolys() == 18 and drop.GetNumberOfPolys() == 12
    with pytest.raises(ValueError, match=r"rgb must be \[H, W, 3\]"):
        depth_to_mesh(depth, intr, rgb=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="max_depth_jump must be > 0"):
        depth_to_mesh(depth, intr, max_depth_jump=0)
