"""backproject / to_polydata / depth_to_mesh / voxel_downsample / remove_outliers on analytic scenes.

Scenes: spheres in front of a plane, seen by a pinhole (or distorted) camera; z-depth per pixel is computed in
closed form from the ray–sphere and ray–plane intersections, so every back-projected point can be checked
against the exact surface.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.geometry import (backproject, depth_to_mesh, remove_outliers, to_polydata,
                                       transform_points, voxel_downsample)

from analytic_scene import PLANE_Z, SPHERES, rigid, trace


def scene_depth(intr: Intrinsics, pose: np.ndarray = np.eye(4)) -> tuple[np.ndarray, np.ndarray]:
    """Exact z-depth [H, W] (mm, NaN where nothing is hit) and surface label (0 plane, 1.. spheres) for a camera
    at ``pose`` (cam→world)."""
    best, label = trace(intr, pose)
    best[~np.isfinite(best)] = np.nan
    return best, label


def surface_residual(points_world: np.ndarray, labels: np.ndarray) -> np.ndarray:
    res = np.empty(len(points_world))
    on_plane = labels == 0
    res[on_plane] = points_world[on_plane, 2] - PLANE_Z
    for i, (c, rad) in enumerate(SPHERES, 1):
        sel = labels == i
        res[sel] = np.linalg.norm(points_world[sel] - np.asarray(c), axis=1) - rad
    return np.abs(res)


CAM = Intrinsics(300.0, 310.0, 159.2, 121.7, 320, 240)


@pytest.mark.parametrize("dist", [None, {"model": "opencv", "coeffs": [-0.25, 0.07, 0.001, -0.001, 0.0]},
                                  {"model": "fisheye", "coeffs": [0.05, -0.01, 0.002, -0.0003]}],
                         ids=["pinhole", "opencv", "fisheye"])
def test_backprojected_points_lie_on_true_surface(dist):
    intr = Intrinsics(CAM.fx, CAM.fy, CAM.cx, CAM.cy, CAM.width, CAM.height, dist)
    depth, label = scene_depth(intr)
    pts = backproject(depth.astype(np.float32), intr)
    assert pts.dtype == np.float32 and pts.shape == (np.isfinite(depth).sum(), 3)
    assert surface_residual(pts.astype(np.float64), label[np.isfinite(depth)]).max() <= 1e-3


def test_two_views_coincide_after_known_poses():
    pose_a, pose_b = np.eye(4), rigid(4.0, -6.0, (8.0, -3.0, 5.0))
    world = []
    for pose in (pose_a, pose_b):
        depth, label = scene_depth(CAM, pose)
        pts = transform_points(backproject(depth, CAM).astype(np.float64), pose)
        assert surface_residual(pts, label[np.isfinite(depth)]).max() <= 1e-3
        world.append(pts)
    # the first sphere's cap seen by both views is the same set of surface points: nearest neighbours within
    # the pixel footprint (~0.25 mm at 60–80 mm depth)
    from scipy.spatial import cKDTree

    c, rad = SPHERES[0]
    cap_b = world[1][(np.abs(np.linalg.norm(world[1] - c, axis=1) - rad) < 1e-3) & (world[1][:, 2] < 70)]
    dist, _ = cKDTree(world[0]).query(cap_b)
    assert len(cap_b) > 1000 and np.percentile(dist, 99) < 0.3


def test_invalid_depth_is_masked_and_documented_errors():
    depth, _ = scene_depth(CAM)
    depth = depth.astype(np.float32)
    n_valid = np.isfinite(depth).sum()
    depth[0, :3] = [np.nan, np.inf, -5.0]
    depth[1, 0] = 0.0
    pts = backproject(depth, CAM)
    assert len(pts) == n_valid - 4 and np.isfinite(pts).all() and (pts[:, 2] > 0).all()
    mask = np.zeros(depth.shape, bool)
    mask[100:110, 50:60] = True
    assert len(backproject(depth, CAM, mask)) == 100
    with pytest.raises(ValueError, match="no valid depth pixels"):
        backproject(depth, CAM, np.zeros(depth.shape, bool))
    with pytest.raises(ValueError, match="no valid depth pixels"):
        backproject(np.full((240, 320), np.nan), CAM)
    with pytest.raises(ValueError, match=r"depth shape 240x319 \(HxW\) does not match the intrinsics size 240x320"):
        backproject(depth[:, 1:], CAM)
    with pytest.raises(ValueError, match=r"mask shape \(10, 10\) does not match depth shape \(240, 320\)"):
        backproject(depth, CAM, np.ones((10, 10), bool))


def test_backproject_row_major_order_and_pixel_centres():
    intr = Intrinsics(10.0, 20.0, 1.0, 0.0, 3, 2)
    depth = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 6.0]], np.float32)
    np.testing.assert_allclose(backproject(depth, intr), [[-0.1, 0, 1], [0, 0, 2], [0.3, 0, 3],
                                                          [-0.4, 0.2, 4], [0.6, 0.3, 6]], atol=1e-7)


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


def test_voxel_downsample_averages_per_voxel():
    pts = np.array([[0.1, 0.1, 0.1], [0.3, 0.5, 0.9], [1.5, 0.2, 0.2], [1.7, 0.4, 0.2]], np.float32)
    colors = np.array([[0, 0, 0], [100, 200, 50], [10, 10, 10], [20, 30, 40]], np.uint8)
    out, out_colors = voxel_downsample(pts, 1.0, colors)
    np.testing.assert_allclose(out, [[0.2, 0.3, 0.5], [1.6, 0.3, 0.2]], atol=1e-6)
    np.testing.assert_array_equal(out_colors, [[50, 100, 25], [15, 20, 25]])
    assert voxel_downsample(pts, 10.0)[1] is None and len(voxel_downsample(pts, 10.0)[0]) == 1
    with pytest.raises(ValueError, match="voxel_size must be > 0"):
        voxel_downsample(pts, 0)


def test_remove_outliers_drops_isolated_points():
    rng = np.random.default_rng(3)
    surface = np.column_stack([rng.uniform(0, 50, (3000, 2)), np.zeros(3000)])
    outliers = rng.uniform(0, 50, (30, 3)) + [0, 0, 20]
    pts = np.concatenate([surface, outliers]).astype(np.float32)
    kept, keep = remove_outliers(pts, nb_neighbors=16, std_ratio=2.0)
    assert not keep[3000:].any() and keep[:3000].mean() > 0.97
    assert len(kept) == keep.sum()
