"""Exactness of the synthetic renderer's ray casting against closed-form intersections (plane, cylinder,
instrument capsule) and of the fisheye ray model against OpenCV."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthTrainingLib.synthetic.raycast import camera_rays, cast, rotate, trace
from SurgicalDepthTrainingLib.synthetic.roots import illinois, ray_points
from SurgicalDepthTrainingLib.synthetic.scenes import (HeightfieldSurface, Instrument, TubeSurface,
                                                       envelope_lipschitz, heightfield_lipschitz, slope_envelope,
                                                       tube_lipschitz)


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    return cv2.Rodrigues(np.array([rx, ry, rz], np.float64))[0]


def _plane(c: float, gx: float, gy: float, half: float = 400.0, step: float = 2.0) -> HeightfieldSurface:
    """Tilted plane z = c + gx x + gy y, sampled on a grid (bilinear interpolation of a plane is the plane)."""
    xs = np.arange(-half, half + step / 2, step)
    yy, xx = np.meshgrid(xs, xs, indexing="ij")
    height = c + gx * xx + gy * yy
    return HeightfieldSurface(x0=-half, y0=-half, step=step, height=height,
                              lipschitz=heightfield_lipschitz(height, step))


def _cylinder(radius: float, z0: float = -100.0, length: float = 800.0, dz: float = 0.5) -> TubeSurface:
    k = int(length / dz) + 1
    axis = np.zeros((k, 3))
    axis[:, 2] = radius
    relief = np.zeros((k, 64))
    env = slope_envelope(axis[:, 2] + relief.min(axis=1), dz) - 0.05
    return TubeSurface(z0=z0, dz=dz, axis=axis, relief=relief, lipschitz=tube_lipschitz(axis, relief, dz),
                       envelope=env, envelope_lipschitz=envelope_lipschitz(axis, dz))


def test_plane_depth_matches_closed_form():
    intr = Intrinsics(fx=150.0, fy=160.0, cx=40.3, cy=29.7, width=80, height=60)
    dirs, lens = camera_rays(intr)
    surface = _plane(c=60.0, gx=0.15, gy=-0.1)
    pose = np.eye(4)
    pose[:3, :3] = _rotation(0.2, -0.15, 0.4)
    pose[:3, 3] = (5.0, -3.0, -20.0)
    depth, length, tool = cast(surface, pose, dirs, lens, max_depth=500.0)
    # closed form: plane n·p = c with n = (-gx, -gy, 1); ray p = o + t d_world
    n = np.array([-0.15, 0.1, 1.0])
    world = dirs @ pose[:3, :3].T
    t = (60.0 - n @ pose[:3, 3]) / (world @ n)
    expected = t * dirs[..., 2]
    assert not tool.any() and lens.all()
    np.testing.assert_allclose(depth, expected, rtol=1e-6)
    np.testing.assert_allclose(length, t, rtol=1e-6)
    # independent pinhole back-projection of the depth lands on the plane
    u, v = np.meshgrid(np.arange(80.0), np.arange(60.0))
    cam = np.stack([(u - intr.cx) / intr.fx * depth, (v - intr.cy) / intr.fy * depth, depth], -1)
    pts = cam @ pose[:3, :3].T + pose[:3, 3]
    assert np.abs(pts @ n - 60.0).max() < 1e-4


def test_cylinder_depth_matches_closed_form():
    radius = 20.0
    surface = _cylinder(radius)
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(4000, 3))
    dirs[:, 2] = np.abs(dirs[:, 2]) + 0.05
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origin = np.array([4.0, -7.0, 10.0])
    t = trace(surface.field, surface.lipschitz, origin, dirs, t_max=1e4)
    # |o_xy + t d_xy| = R, larger root (the origin is inside)
    a = (dirs[:, :2] ** 2).sum(1)
    b = 2 * dirs[:, :2] @ origin[:2]
    c = origin[:2] @ origin[:2] - radius ** 2
    expected = (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)
    keep = expected + origin[2] < 600.0  # inside the tabulated length
    np.testing.assert_allclose(t[keep], expected[keep], rtol=1e-6)
    hits = origin + dirs * t[:, None]
    assert np.abs(np.linalg.norm(hits[keep, :2], axis=1) - radius).max() < 1e-4


def test_instrument_capsule_closed_form():
    # shaft along -z from the tip at z = 50 (cylinder z in [20, 50]), hemispherical tip reaching z = 54
    tool = Instrument(tip=np.array([0.0, 0.0, 50.0]), direction=np.array([0.0, 0.0, -1.0]), radius=4.0,
                      length=30.0)
    t_side = tool.intersect(np.array([-20.0, 0.0, 35.0]), np.array([[1.0, 0.0, 0.0]]))
    assert t_side[0] == pytest.approx(16.0, abs=1e-12)
    t_tip = tool.intersect(np.array([0.0, 0.0, 80.0]), np.array([[0.0, 0.0, -1.0]]))
    assert t_tip[0] == pytest.approx(80.0 - 54.0, abs=1e-12)
    d = np.array([[0.6, 0.0, -0.8]])  # oblique hit on the hemisphere: |o + t d - tip| = r
    t_obl = tool.intersect(np.array([-3.0, 0.0, 60.0]), d)
    assert np.linalg.norm(np.array([-3.0, 0.0, 60.0]) + t_obl[0] * d[0] - tool.tip) == pytest.approx(4.0)
    misses = tool.intersect(np.array([-20.0, 0.0, 35.0]), np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert np.isinf(misses).all()
    assert tool.distance(np.array([[-4.0, 0.0, 35.0], [0.0, 0.0, 54.0]])) == pytest.approx([0.0, 0.0], abs=1e-12)


def test_fisheye_rays_match_opencv():
    coeffs = [-0.03, 0.004, 0.0, 0.0]
    intr = Intrinsics(fx=90.0, fy=90.0, cx=49.5, cy=39.5, width=100, height=80,
                      distortion={"model": "fisheye", "coeffs": coeffs})
    dirs, lens = camera_rays(intr)
    u, v = np.meshgrid(np.arange(100.0), np.arange(80.0))
    pix = np.stack([u, v], -1).reshape(-1, 1, 2)
    k = np.array([[90.0, 0, 49.5], [0, 90.0, 39.5], [0, 0, 1]])
    und = cv2.fisheye.undistortPoints(pix, k, np.array(coeffs)).reshape(80, 100, 2)
    ours = dirs[..., :2] / dirs[..., 2:3]
    assert lens.all()
    np.testing.assert_allclose(ours, und, atol=1e-5)


def test_a_calibration_that_turns_over_sees_nothing_beyond_its_reach():
    """Catches the renderer's plain Newton inversion of a user's fisheye calibration whose polynomial stops
    increasing before the corners (k1 = -0.3: θd peaks at 0.70, at 60°): it returned angles whose radius is not the
    pixel's and called those pixels in the lens, so a synthetic clip 'through a real scope' had valid depth on
    rays that back-project 1e5 mm off the surface. In-lens rays must project back onto their pixel with OpenCV's
    forward model; the rest are outside the lens."""
    coeffs = [-0.3, 0.0, 0.0, 0.0]
    intr = Intrinsics(fx=80.0, fy=80.0, cx=59.5, cy=47.5, width=120, height=96,
                      distortion={"model": "fisheye", "coeffs": coeffs})
    dirs, lens = camera_rays(intr)
    assert 0 < lens.sum() < lens.size
    k = np.array([[80.0, 0, 59.5], [0, 80.0, 47.5], [0, 0, 1]])
    back, _ = cv2.fisheye.projectPoints(dirs[lens].reshape(-1, 1, 3), np.zeros(3), np.zeros(3), k, np.array(coeffs))
    v, u = np.nonzero(lens)
    np.testing.assert_allclose(back.reshape(-1, 2), np.stack([u, v], -1), atol=1e-6)
    theta = np.linspace(0, 1.57, 100001)
    peak = np.max(theta * (1 - 0.3 * theta ** 2))
    radius = np.hypot((np.arange(120) - 59.5)[None, :], (np.arange(96) - 47.5)[:, None]) / 80.0
    assert not lens[radius > peak * 1.0001].any() and lens[radius < peak * 0.999].all()


def test_origin_inside_surface_is_rejected():
    surface = _cylinder(10.0)
    with pytest.raises(ValueError, match="inside the surface"):
        trace(surface.field, surface.lipschitz, np.array([0.0, 12.0, 0.0]), np.array([[0.0, 0.0, 1.0]]), 100.0)


def test_illinois_pins_roots_in_their_brackets():
    # F = |p|^2 - 100 along rays from the origin: the root is at t = 10 for every unit direction
    def field(p):
        return (p * p).sum(axis=1) - 100.0

    rng = np.random.default_rng(7)
    dirs = rng.normal(size=(500, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    lo, hi = rng.uniform(0.0, 9.9, 500), rng.uniform(10.1, 60.0, 500)
    origin = np.zeros(3)
    dirs_t = np.ascontiguousarray(dirs.T)
    t = illinois(field, origin, dirs_t, lo, hi, lo ** 2 - 100, hi ** 2 - 100, tol=1e-9)
    np.testing.assert_allclose(t, 10.0, rtol=1e-9)
    pts = ray_points(origin, dirs_t, t)
    assert pts.shape == (500, 3) and np.abs(field(pts)).max() < 1e-7


def test_rotate_is_a_matrix_product():
    rot = _rotation(0.3, -1.1, 2.0)
    v = np.random.default_rng(0).normal(size=(4, 5, 3))
    np.testing.assert_allclose(rotate(rot, v), v @ rot.T, atol=1e-14)
    assert rotate(rot, np.zeros((0, 3))).shape == (0, 3)
