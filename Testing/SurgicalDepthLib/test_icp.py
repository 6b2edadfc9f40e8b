"""icp / estimate_poses on exact depth of an analytic scene (two spheres before a plane) seen from known poses."""
from __future__ import annotations

import numpy as np
import pytest

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.geometry import backproject
from SurgicalDepthLib.icp import estimate_normals, estimate_poses, icp

from analytic_scene import PLANE_Z, SPHERES, rigid, trace

CAM = Intrinsics(150.0, 155.0, 79.6, 60.35, 160, 120)


def scene_depth(pose: np.ndarray) -> np.ndarray:
    """Exact z-depth [H, W] (mm) of the scene for camera-to-world ``pose``."""
    return trace(CAM, pose)[0]


def motion_errors(T: np.ndarray, T_true: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, translation error relative to the true step)."""
    dR = T[:3, :3] @ T_true[:3, :3].T
    angle = np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1, 1)))
    return float(angle), float(np.linalg.norm(T[:3, 3] - T_true[:3, 3]) / np.linalg.norm(T_true[:3, 3]))


POSE_A = np.eye(4)
POSE_B = rigid(2.0, -3.0, (4.0, -3.0, 2.5), 4.0)


@pytest.mark.parametrize("loss", ["huber", "tukey"])
def test_icp_recovers_relative_motion(loss):
    src = backproject(scene_depth(POSE_B), CAM)
    tgt = backproject(scene_depth(POSE_A), CAM)
    T_true = np.linalg.inv(POSE_A) @ POSE_B  # maps B-camera coordinates to A-camera coordinates
    T, info = icp(src, tgt, loss=loss)
    rot_err, trans_err = motion_errors(T, T_true)
    assert rot_err < 0.5 and trans_err < 0.02, (rot_err, trans_err, info)
    assert info["converged"] and info["fitness"] > 0.7 and info["loss"] == loss
    assert np.allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-12) and T[3].tolist() == [0, 0, 0, 1]


def test_icp_is_robust_to_gross_outliers():
    rng = np.random.default_rng(0)
    src = backproject(scene_depth(POSE_B), CAM)
    tgt = backproject(scene_depth(POSE_A), CAM)
    # 15 % of the source replaced by depth spikes (the error mode of predicted depth at edges)
    bad = rng.choice(len(src), len(src) * 15 // 100, replace=False)
    src = src.copy()
    src[bad] *= rng.uniform(0.6, 1.4, (len(bad), 1)).astype(np.float32)
    T, _ = icp(src, tgt, loss="tukey")
    rot_err, trans_err = motion_errors(T, np.linalg.inv(POSE_A) @ POSE_B)
    assert rot_err < 0.5 and trans_err < 0.02


def test_normals_of_plane_and_sphere():
    pts = backproject(scene_depth(POSE_A), CAM).astype(np.float64)
    n = estimate_normals(pts, k=16)
    on_plane = np.abs(pts[:, 2] - PLANE_Z) < 1e-6
    assert np.abs(n[on_plane] - [0, 0, -1]).max() < 1e-6  # oriented towards the camera
    sph = np.abs(np.linalg.norm(pts - SPHERES[0][0], axis=1) - SPHERES[0][1]) < 1e-6
    radial = (pts[sph] - SPHERES[0][0]) / SPHERES[0][1]
    assert np.median(np.einsum("ni,ni->n", n[sph], radial)) > 0.999


def test_estimate_poses_chains_frames():
    steps = [rigid(1.0 * k, -1.5 * k, (2.0 * k, -1.0 * k, 1.5 * k), 0.5 * k) for k in range(4)]
    poses, info = estimate_poses([scene_depth(P) for P in steps], CAM, stride=2)
    assert len(poses) == 4 and np.array_equal(poses[0], np.eye(4))
    assert "frame-to-frame" in info["method"] and "identity" in info["method"]
    assert info["frames"][0] is None and all(f["converged"] for f in info["frames"][1:])
    for k in range(1, 4):
        # ground truth relative to frame 0 (the estimate's world frame)
        rot_err, trans_err = motion_errors(poses[k], np.linalg.inv(steps[0]) @ steps[k])
        assert rot_err < 0.5 and trans_err < 0.02, (k, rot_err, trans_err)


def _plane_depth(h: int = 96, w: int = 120) -> tuple[np.ndarray, Intrinsics]:
    """Exact z-depth of a tilted plane (40-67 mm) and its camera."""
    v = np.mgrid[:h, :w][0]
    return 50.0 / (1 + 0.3 * (v - (h - 1) / 2) / 60), Intrinsics(60.0, 60.0, (w - 1) / 2, (h - 1) / 2, w, h)


def test_a_flat_view_moves_only_where_its_geometry_says(caplog):
    """Catches ICP on a plane (sliding along it and turning about its normal are not determined) solved through
    those directions anyway: with 0.05 mm of noise the pose ran off by 100 degrees and 1e11 mm, or the run stopped
    on a singular system; now those directions stay still, the others are fitted, and a warning says so."""
    plane, cam = _plane_depth()
    noisy = plane + np.random.default_rng(0).normal(0, 0.05, plane.shape)
    with caplog.at_level("WARNING", logger="SurgicalDepthLib.icp"):
        poses, info = estimate_poses([plane, noisy], cam, stride=1)
    rot_err = np.degrees(np.arccos(np.clip((np.trace(poses[1][:3, :3]) - 1) / 2, -1, 1)))
    assert rot_err < 0.05 and np.linalg.norm(poses[1][:3, 3]) < 0.05
    assert info["frames"][1]["degenerate_dofs"] == 3 and "does not determine 3 of the 6" in caplog.text


def test_a_frame_icp_cannot_register_keeps_the_previous_pose(caplog):
    """Catches one unusable frame (an unrelated view, a few valid pixels) that ended the whole pose sequence with a
    ValueError, or was chained in as a pose 1e45 mm away and carried into the next frame's start; also a fitness
    that could not fall below 0.5 (measured against the matches' own median), so such frames went unnoticed."""
    steps = [rigid(1.0 * k, -1.5 * k, (2.0 * k, -1.0 * k, 1.5 * k), 0.5 * k) for k in range(4)]
    depths = [scene_depth(P) for P in steps]
    plane, _ = _plane_depth(120, 160)
    few = np.zeros_like(depths[0])
    few[60, 80:85] = 50.0
    with caplog.at_level("WARNING", logger="SurgicalDepthLib.icp"):
        poses, info = estimate_poses([depths[0], depths[1], 3 * plane, few, depths[2], depths[3]], CAM)
    assert [bool(f and f.get("failed")) for f in info["frames"]] == [False, False, True, True, False, False]
    assert np.array_equal(poses[2], poses[1]) and np.array_equal(poses[3], poses[1])
    assert caplog.text.count("the previous pose is kept") == 2
    for k, pose in ((1, poses[1]), (2, poses[4]), (3, poses[5])):  # registered to the last good frame
        rot_err, trans_err = motion_errors(pose, np.linalg.inv(steps[0]) @ steps[k])
        assert rot_err < 0.5 and trans_err < 0.02, (k, rot_err, trans_err)


def test_icp_on_exact_depth_converges():
    """Catches a convergence test on the step size alone: on exact depth the fit's last digits cycle (steps of
    1e-6 rad against a 1e-7 tolerance), so frames registered to 0.03 degrees were reported as not converged
    (a warning on every good frame)."""
    src = backproject(scene_depth(POSE_B), CAM)
    tgt = backproject(scene_depth(POSE_A), CAM)
    T, info = icp(src, tgt, max_iterations=50)
    assert info["converged"] and info["iterations"] < 50 and info["fitness"] > 0.9


def test_errors():
    pts = np.random.default_rng(0).normal(size=(100, 3))
    with pytest.raises(ValueError, match=r"source_points must be \[N, 3\], got shape \(100, 2\)"):
        icp(pts[:, :2], pts)
    with pytest.raises(ValueError, match="loss must be one of"):
        icp(pts, pts, loss="cauchy")
    with pytest.raises(ValueError, match="target_points needs at least 6 finite points"):
        icp(pts, pts[:3])
    with pytest.raises(ValueError, match="init is not rigid"):
        icp(pts, pts, init=np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="estimate_poses: frame 1: no valid depth pixels"):
        estimate_poses([scene_depth(POSE_A), np.zeros((120, 160))], CAM)
    with pytest.raises(ValueError, match="depths is empty"):
        estimate_poses([], CAM)


def test_a_frame_whose_few_pixels_miss_the_tracking_grid_keeps_the_previous_pose(caplog):
    """Catches: a frame whose only valid pixels lie off the stride-2 tracking grid (odd rows/columns) ending the
    whole pose sequence — and ``reconstruct --fuse`` after frames were written — with "estimate_poses: frame 1: no
    valid depth pixels", while the same frame with its pixels on the grid is kept at the previous pose."""
    steps = [rigid(1.0 * k, -1.5 * k, (2.0 * k, -1.0 * k, 1.5 * k), 0.5 * k) for k in range(3)]
    depths = [scene_depth(P) for P in steps]
    odd = np.zeros_like(depths[0])
    odd[61, 81] = odd[63, 85] = 50.0
    with caplog.at_level("WARNING", logger="SurgicalDepthLib.icp"):
        poses, info = estimate_poses([depths[0], odd, depths[1], depths[2]], CAM)
    assert [bool(f and f.get("failed")) for f in info["frames"]] == [False, True, False, False]
    assert np.array_equal(poses[1], poses[0]) and "no valid depth on the tracking grid" in caplog.text
    rot_err, trans_err = motion_errors(poses[3], np.linalg.inv(steps[0]) @ steps[2])
    assert rot_err < 0.5 and trans_err < 0.02
    poses, info = estimate_poses([odd, depths[0], depths[1]], CAM)  # nothing to start from: the next frame does
    assert info["frames"][0]["failed"] and np.array_equal(poses[1], np.eye(4))
    rot_err, trans_err = motion_errors(poses[2], np.linalg.inv(steps[0]) @ steps[1])
    assert rot_err < 0.5 and trans_err < 0.02
