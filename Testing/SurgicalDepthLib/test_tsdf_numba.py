"""The fused CPU kernel of the TSDF fusion (``tsdf_numba``, ``TSDFVolume(kernel="numba")``, the CPU default where
Numba is installed) against the torch ops it replaces: same blocks (the same allocation), same float32 arithmetic,
so the fused volumes must be identical, bit for bit."""
from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.tsdf import TSDFVolume

from analytic_scene import NEAR_BOUNDS, NEAR_POSES, near_camera_depth, rigid, trace

if importlib.util.find_spec("numba") is None:
    pytest.skip("numba is not installed (pip install surgical-depth[fast])", allow_module_level=True)

CAM = Intrinsics(150.0, 155.0, 79.6, 60.35, 160, 120)
LENS = Intrinsics(150.0, 155.0, 79.6, 60.35, 160, 120, {"model": "fisheye", "coeffs": [0.05, -0.01, 0.002, -0.0003]})
POSES = [rigid(a, b, (tx, ty, 0.0)) for a, b, tx, ty in [(0, 0, 0, 0), (5, 0, 0, -6), (-5, 0, 0, 6)]]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scene(intr: Intrinsics, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact z-depth float32 [H, W] (spheres before a plane) and a colour per surface."""
    depth, label = trace(intr, pose)
    return depth.astype(np.float32), np.array([(0, 0, 255), (255, 0, 0), (0, 255, 0)], np.uint8)[label]


def fused(kernel: str, intr: Intrinsics, colour: bool = True, **volume) -> tuple[np.ndarray, ...]:
    vol = TSDFVolume(1.0, 4.0, kernel=kernel, **volume)
    assert vol.kernel == kernel
    for pose in POSES:
        depth, rgb = scene(intr, pose)
        vol.integrate(depth, rgb if colour else None, intr, pose)
    return vol.to_grid()


@pytest.mark.parametrize("intr, colour, bounds", [
    (CAM, True, None), (CAM, False, None), (LENS, True, None),
    (CAM, True, ((-60.0, -50.0, 50.0), (60.0, 50.0, 126.0)))],
    ids=["pinhole", "no-colour", "lens", "dense"])
def test_compiled_loop_gives_the_torch_ops_volume_bit_for_bit(intr, colour, bounds):
    """Three posed frames. Bugs caught: planes of the sums swapped, a colour channel unpacked wrongly, row and
    column of the pixel swapped, the padded border offset, the lens's pixels ignored, sums overwritten instead of
    added, colour written without colour."""
    ref = fused("torch", intr, colour, bounds=bounds)
    got = fused("numba", intr, colour, bounds=bounds)
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)
    assert got[1].max() == len(POSES) and (got[2].max() > 0) == colour


def test_voxels_behind_the_camera_and_missing_depth_follow_the_torch_rule():
    """A dense volume around the camera, depth nearer than the truncation, missing and NaN depth. Bugs caught: the
    behind-the-camera test dropped (z <= 0 projects through the image), missing depth read as 0."""
    depth, (fx, fy, cx, cy) = near_camera_depth()
    cam = Intrinsics(fx, fy, cx, cy, 48, 36)
    grids = []
    for kernel in ("torch", "numba"):
        vol = TSDFVolume(0.25, 0.6, bounds=NEAR_BOUNDS, kernel=kernel)
        for pose in NEAR_POSES:
            vol.integrate(depth, None, cam, pose)
        grids.append(vol.to_grid())
    for a, b in zip(*grids):
        np.testing.assert_array_equal(a, b)
    assert grids[1][1].max() == 2


def test_auto_falls_back_to_torch_ops_when_the_loop_cannot_compile(monkeypatch, caplog):
    """Bug caught: a CPU user whose Numba cannot compile (an LLVM it does not support) unable to fuse at all, or a
    frame left unfused after the failure. ``kernel="numba"`` asked for explicitly raises instead."""
    from SurgicalDepthLib import tsdf_numba

    def broken(*args, **kwargs):
        raise RuntimeError("LLVM says no")

    monkeypatch.setattr(tsdf_numba, "fuse_blocks", broken)
    depth, rgb = scene(CAM, POSES[0])
    vol = TSDFVolume(1.0, 4.0)
    assert vol.kernel == "numba"
    with caplog.at_level(logging.WARNING, logger="SurgicalDepthLib.tsdf"):
        vol.integrate(depth, rgb, CAM, POSES[0])
        vol.integrate(depth, rgb, CAM, POSES[0])
    assert vol.kernel == "torch" and vol.to_grid()[1].max() == 2
    assert [r.message for r in caplog.records if "kernels failed" in r.message] == [
        "TSDFVolume: the Numba kernels failed (RuntimeError: LLVM says no); fusing with torch ops instead"]
    with pytest.raises(RuntimeError, match="LLVM says no"):
        TSDFVolume(1.0, 4.0, kernel="numba").integrate(depth, rgb, CAM, POSES[0])
    with pytest.raises(ValueError, match="kernel='numba' runs on the CPU, not on cuda"):
        TSDFVolume(1.0, 4.0, device="cuda", kernel="numba")
