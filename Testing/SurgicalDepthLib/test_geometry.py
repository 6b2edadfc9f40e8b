"""backproject / voxel_downsample / remove_outliers on analytic scenes.

Scenes: spheres in front of a plane, seen by a pinhole (or distorted) camera; z-depth per pixel is computed in
closed form from the ray–sphere and ray–plane intersections, so every back-projected point can be checked
against the exact surface.
"""
from __future__ import annotations

import numpy as np
import pytest

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.geometry import backproject, remove_outliers, transform_points, voxel_downsample

from analytic_scene import SPHERES, rigid, scene_depth, surface_residual


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


def test_a_distorted_cameras_rays_are_undistorted_once(monkeypatch):
    """Catches: back-projection undistorting every pixel again for each frame of a video (0.15–0.6 s per 1080p frame
    through a fisheye) or again for the lens correction of the same camera, and shared rays that a caller could
    change in place. Other cameras still get their own."""
    from SurgicalDepthLib import camera

    intr = Intrinsics(CAM.fx, CAM.fy, CAM.cx, CAM.cy, CAM.width, CAM.height,
                      {"model": "fisheye", "coeffs": [0.05, -0.01, 0.002, -0.0004]})
    depth = scene_depth(intr)[0].astype(np.float32)  # (traced through the library's rays: before counting)
    calls = []
    real = camera.pixel_rays
    monkeypatch.setattr(camera, "pixel_rays", lambda intr: calls.append(intr) or real(intr))
    first = backproject(depth, intr)
    np.testing.assert_array_equal(backproject(depth, intr), first)
    assert len(calls) == 1 and not camera.camera_rays(intr).flags.writeable
    from SurgicalDepthLib.lens import lens_factor

    lens_factor(intr, 100.0)  # the lens correction of the same camera reads the same rays
    assert [c for c in calls if c.distortion is not None] == [intr]
    other = Intrinsics(intr.fx + 1.0, intr.fy, intr.cx, intr.cy, intr.width, intr.height, intr.distortion)
    assert not np.array_equal(backproject(depth, other), first)
    assert [c for c in calls if c.distortion is not None] == [intr, other]


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


def _cv2_rays(intr: Intrinsics) -> np.ndarray:
    """Unit-z rays float64 [H, W, 2] of the pixel centres from OpenCV's own undistortion (tight criteria), not the
    library's."""
    import cv2

    u, v = np.meshgrid(np.arange(intr.width, dtype=np.float64), np.arange(intr.height, dtype=np.float64))
    pix = np.stack([u, v], -1).reshape(-1, 1, 2)
    if intr.distortion is None:
        return np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy], -1)
    D = np.asarray(intr.distortion["coeffs"], np.float64)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 300, 1e-15)
    if intr.distortion["model"] == "fisheye":
        rays = cv2.fisheye.undistortPoints(pix, intr.K, D, criteria=crit)
    else:
        rays = cv2.undistortPoints(pix, intr.K, D, criteria=crit)
    return rays.reshape(intr.height, intr.width, 2)


def _cv2_project(points: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """Pixel coordinates float64 [N, 2] of camera-frame points through OpenCV's forward lens model."""
    import cv2

    P = points.astype(np.float64).reshape(-1, 1, 3)
    if intr.distortion is not None and intr.distortion["model"] == "fisheye":
        uv, _ = cv2.fisheye.projectPoints(P, np.zeros(3), np.zeros(3), intr.K, intr.dist_coeffs)
    else:
        uv, _ = cv2.projectPoints(P, np.zeros(3), np.zeros(3), intr.K, intr.dist_coeffs)
    return uv.reshape(-1, 2)


@pytest.mark.parametrize("dist", [None, {"model": "opencv", "coeffs": [-0.25, 0.07, 0.001, -0.001, 0.0]},
                                  {"model": "fisheye", "coeffs": [0.05, -0.01, 0.002, -0.0003]}],
                         ids=["pinhole", "opencv", "fisheye"])
def test_backprojection_is_the_inverse_of_opencvs_projection(dist):
    """Independent of the library's rays (analytic_scene takes them from it for distorted cameras): depth of a plane
    through (0, 0, 100) mm tilted 30° about y, traced along OpenCV's undistorted rays, must back-project onto the
    plane and project back through ``cv2.projectPoints`` onto the pixel centres. Catches a half-pixel shift (pixel
    corners instead of centres), depth taken as ray length, or a lens model applied in the wrong direction."""
    intr = Intrinsics(CAM.fx, CAM.fy, CAM.cx, CAM.cy, CAM.width, CAM.height, dist)
    normal = np.array([np.sin(np.radians(30.0)), 0.0, -np.cos(np.radians(30.0))])
    rays = _cv2_rays(intr)
    z = (normal @ [0.0, 0.0, 100.0]) / (rays @ normal[:2] + normal[2])  # depth = z of the ray-plane intersection
    pts = backproject(z.astype(np.float32), intr)
    assert pts.dtype == np.float32 and pts.flags.c_contiguous and pts.shape == (CAM.width * CAM.height, 3)
    np.testing.assert_allclose(pts[:, 2], z.astype(np.float32).ravel(), rtol=0)  # depth is z, not ray length
    off_plane = np.abs((pts.astype(np.float64) - [0.0, 0.0, 100.0]) @ normal) / pts[:, 2]
    assert off_plane.max() < 1e-6  # float32 rounding
    u, v = np.meshgrid(np.arange(CAM.width), np.arange(CAM.height))  # row-major: v, then u
    np.testing.assert_allclose(_cv2_project(pts, intr), np.stack([u.ravel(), v.ravel()], 1), atol=1e-3)


def test_float64_depth_beyond_float32_gives_no_point_and_point_mask_agrees():
    """Bug caught: ``point_mask`` judged a float64 depth as given while the points are float32, so a depth of 1e39
    (inf in float32) or 1e-300 (0 in float32) was a valid pixel there and no point in ``backproject``: the colours a
    caller picks with the mask (as ``reconstruct`` does) no longer matched the points."""
    from SurgicalDepthLib.geometry import point_mask

    intr = Intrinsics(10.0, 10.0, 2.0, 1.5, 5, 4)
    depth = np.full((4, 5), 80.0)
    depth[1, 1], depth[2, 3], depth[3, 0] = 1e39, 1e-300, 3e38  # 3e38 still fits float32
    valid = point_mask(depth, intr)
    assert valid.sum() == 18 and not valid[1, 1] and not valid[2, 3] and valid[3, 0]
    pts = backproject(depth, intr)
    assert len(pts) == valid.sum() and np.isfinite(pts).all()
    np.testing.assert_array_equal(pts[:, 2], depth[valid].astype(np.float32))
