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


def _box_corner_depth(intr: Intrinsics) -> np.ndarray:
    """z-depth float64 [H, W] of the inside corner of a box, the planes x = 15, y = 12 and z = 100 (mm), seen from
    the origin: along each pixel's ray the nearest of the three plane hits."""
    u, v = np.meshgrid(np.arange(intr.width, dtype=np.float64), np.arange(intr.height, dtype=np.float64))
    x, y = (u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy
    with np.errstate(divide="ignore"):
        hits = np.stack([np.where(x > 0, 15.0 / x, np.inf), np.where(y > 0, 12.0 / y, np.inf),
                         np.full(x.shape, 100.0)])
    return hits.min(0)


def test_depth_to_mesh_triangles_join_grid_neighbours_and_face_the_camera():
    """Box corner (three planes, a fold but no depth jump): every triangle joins three pixels of one 2×2 block, is
    wound so that its normal points towards the camera (normal · centroid < 0, the documented winding), and lies on
    one of the planes within float32 rounding; no triangle is lost along the folds. Catches a winding flipped on
    part of the grid, triangles between non-adjacent pixels after the remapping of invalid pixels, and a relative
    jump test that drops triangles of a steep but continuous surface."""
    intr = Intrinsics(60.0, 62.0, 31.3, 23.6, 64, 48)
    depth = _box_corner_depth(intr).astype(np.float32)
    depth[10, 5] = np.nan  # one hole: the vertices after it are renumbered
    mesh = depth_to_mesh(depth, intr)
    pts = vtk_to_numpy(mesh.GetPoints().GetData()).astype(np.float64)
    tris = vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    pix = np.flatnonzero(np.isfinite(depth))[tris]  # flat pixel index of each corner
    rows, cols = pix // 64, pix % 64
    assert (np.ptp(rows, axis=1) == 1).all() and (np.ptp(cols, axis=1) == 1).all()
    # the documented rule, corner by corner: a triangle is kept when (max z − min z) / min z <= 0.05 (the walls
    # seen at grazing angles lose theirs; the corner's folds do not)
    z = depth[rows, cols].astype(np.float64)
    assert ((z.max(1) - z.min(1)) / z.min(1)).max() <= 0.05
    blocks = np.stack([depth[:-1, :-1], depth[:-1, 1:], depth[1:, :-1], depth[1:, 1:]]).astype(np.float64)
    upper, lower = blocks[[0, 2, 1]], blocks[[1, 2, 3]]  # (a, c, b) and (b, c, d) of each 2×2 block
    n_kept = sum(int(((t.max(0) - t.min(0)) <= 0.05 * t.min(0)).sum()) for t in (upper, lower))  # NaN: dropped
    assert len(tris) == n_kept and n_kept > 0.6 * 2 * 63 * 47
    a, b, c = pts[tris[:, 0]], pts[tris[:, 1]], pts[tris[:, 2]]
    facing = np.einsum("nk,nk->n", np.cross(b - a, c - a), (a + b + c) / 3)
    assert (facing < 0).all()
    on_plane = np.min([np.abs(pts[:, 0] - 15.0), np.abs(pts[:, 1] - 12.0), np.abs(pts[:, 2] - 100.0)], 0)
    assert on_plane.max() < 1e-4


def test_depth_to_mesh_of_float64_depth_beyond_float32():
    """Bug caught: a float64 depth map holding 1e39 (inf once the points are float32) or 1e-300 (0 in float32)
    crashed ``depth_to_mesh`` with a numpy "shape mismatch" (its pixel mask and its points disagreed); such pixels
    must simply get no vertex, as in float32."""
    intr = Intrinsics(10.0, 10.0, 2.0, 1.5, 5, 4)
    depth = np.full((4, 5), 80.0)
    depth[1, 1], depth[2, 3] = 1e39, 1e-300
    rgb = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    mesh = depth_to_mesh(depth, intr, rgb)
    ref = np.full((4, 5), 80.0, np.float32)  # what a float32 map gives, those pixels being no depth there
    ref[1, 1], ref[2, 3] = np.nan, np.nan
    want = depth_to_mesh(ref, intr, rgb)
    assert mesh.GetNumberOfPoints() == want.GetNumberOfPoints() == 18
    np.testing.assert_array_equal(vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()),
                                  vtk_to_numpy(want.GetPolys().GetConnectivityArray()))
    np.testing.assert_array_equal(vtk_to_numpy(mesh.GetPointData().GetArray("RGB")), rgb[np.isfinite(ref)])
