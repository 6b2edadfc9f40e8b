"""The fused Triton kernels of the TSDF fusion (``tsdf_triton``, ``TSDFVolume(kernel="triton")``) against the torch
path, exact ground truth and a dense per-pixel reference. They run compiled on a CUDA device; without one,
``test_tsdf.py::test_triton_kernels_in_the_interpreter`` runs this file in a subprocess under Triton's interpreter
(``TRITON_INTERPRET=1``), where Triton's arithmetic is numpy's and the sums must equal the torch path's bit for bit.
"""
from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.geometry import backproject, transform_points
from SurgicalDepthLib.tsdf import TSDFVolume

from analytic_scene import NEAR_BOUNDS, NEAR_POSES, near_camera_depth, rigid, trace, true_distance

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
import triton  # noqa: E402

INTERPRETED = bool(triton.knobs.runtime.interpret)
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
if DEVICE == "cpu" and not INTERPRETED:
    pytest.skip("the Triton kernels need a CUDA device or TRITON_INTERPRET=1 (test_tsdf.py runs this file so)",
                allow_module_level=True)

CAM = Intrinsics(150.0, 155.0, 79.6, 60.35, 160, 120)
LENS = Intrinsics(150.0, 155.0, 79.6, 60.35, 160, 120, {"model": "opencv", "coeffs": [-0.2, 0.05, 0.001, -0.001, 0.0]})
POSES = [rigid(a, b, (tx, ty, 0.0)) for a, b, tx, ty in [(0, 0, 0, 0), (5, 0, 0, -6), (-5, 0, 0, 6)]]
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")]  # the interpreter's numpy at z = 0


def scene(intr: Intrinsics, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact z-depth float32 [H, W] (spheres before a plane) and a colour per surface."""
    depth, label = trace(intr, pose)
    return depth.astype(np.float32), np.array([(0, 0, 255), (255, 0, 0), (0, 255, 0)], np.uint8)[label]


def block_sums(vol: TSDFVolume) -> dict[int, torch.Tensor]:
    """Running sums [5, 512] of each block that holds an observation, by block key (dense: block index)."""
    if vol.bounds is None:
        keys, sums = vol._keys.tolist(), vol._sums[vol._slots].cpu()
    else:
        keys, sums = list(range(vol._n_blocks)), vol._sums.cpu()
    return {k: s for k, s in zip(keys, sums) if bool(s[1].any())}


def assert_same_sums(ref: dict[int, torch.Tensor], got: dict[int, torch.Tensor]) -> None:
    """Blocks observed by both paths hold the same sums (bit for bit in the interpreter); nearly every block of the
    torch path is also one of the Triton path's."""
    common = sorted(ref.keys() & got.keys())
    assert len(common) >= 0.99 * len(ref), (len(common), len(ref))
    a, b = torch.stack([ref[k] for k in common]), torch.stack([got[k] for k in common])
    if INTERPRETED:
        assert torch.equal(a, b), (a - b).abs().amax(dim=(0, 2))
    else:  # a GPU may round the division differently: a voxel centre on a pixel border may pick its neighbour
        assert (a[:, 1] != b[:, 1]).float().mean() <= 1e-4
        torch.testing.assert_close(a[:, 0][a[:, 1] == b[:, 1]], b[:, 0][a[:, 1] == b[:, 1]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("intr, colour", [(CAM, True), (CAM, False), (LENS, True)],
                         ids=["pinhole", "no-colour", "lens"])
def test_fused_kernel_adds_what_the_torch_ops_add(intr, colour):
    """One frame into a sparse volume, both paths. Bugs caught: planes of the sums swapped or offset, the packed
    colour unpacked wrongly (a channel off by 256), row and column of the pixel swapped, the padded border offset
    by one, the colour planes written when there is no colour, the torch projection's pixels ignored for a
    distorted camera."""
    depth, rgb = scene(intr, POSES[1])
    sums = []
    for kernel in ("torch", "triton"):
        vol = TSDFVolume(1.0, 4.0, device=DEVICE, kernel=kernel)
        assert vol.kernel == kernel
        vol.integrate(depth, rgb if colour else None, intr, POSES[1])
        sums.append(block_sums(vol))
    assert_same_sums(*sums)
    if not colour:
        assert not any(bool(s[2:].any()) for s in sums[1].values())


def test_voxels_behind_the_camera_and_missing_depth_follow_the_torch_rule():
    """A dense volume around the camera, depth nearer than the truncation (visited blocks reach behind the camera),
    missing and NaN depth, two frames. Bugs caught: the behind-the-camera test dropped (z <= 0 projects through
    the image), missing depth read as 0 instead of the −float-max sentinel, the dense block index wrong."""
    depth, (fx, fy, cx, cy) = near_camera_depth()
    cam = Intrinsics(fx, fy, cx, cy, 48, 36)
    for pose in NEAR_POSES:
        sums = []
        for kernel in ("torch", "triton"):
            vol = TSDFVolume(0.25, 0.6, bounds=NEAR_BOUNDS, device=DEVICE, kernel=kernel)
            vol.integrate(depth, None, cam, pose)
            sums.append(block_sums(vol))
        assert_same_sums(*sums)


def test_band_blocks_cover_the_band_of_every_pixel():
    """Reference: every pixel's ray sampled every 0.05 voxel across its band (as for the quadtree in test_tsdf.py).
    Bugs caught: too few samples per band (the far half of the band missing), the bounding box taken from one end
    of the band (samples clamped into the wrong blocks), the y and z extents of the occupancy grid swapped."""
    depth = scene(CAM, POSES[1])[0]
    covered = {}
    for kernel in ("torch", "triton"):
        vol = TSDFVolume(1.0, 4.0, device=DEVICE, kernel=kernel)
        vol.integrate(depth, None, CAM, POSES[1])
        _, weight, _, origin = vol.to_grid()
        pts = backproject(depth, CAM)
        band = np.linspace(-4.0, 4.0, 161)
        ray = pts / pts[:, 2:3]
        samples = transform_points((ray[:, None, :] * (pts[:, None, 2:3] + band[None, :, None])).reshape(-1, 3),
                                   POSES[1])
        wanted = np.unique(np.floor((samples - origin) / 8.0 + 0.5 / 8).astype(np.int64), axis=0)
        inside = ((wanted >= 0) & (wanted < np.array(weight.shape) // 8)).all(1)
        allocated = weight.reshape(weight.shape[0] // 8, 8, weight.shape[1] // 8, 8, weight.shape[2] // 8, 8)
        allocated = allocated.max(axis=(1, 3, 5)) > 0
        hit = np.zeros(len(wanted), bool)
        hit[inside] = allocated[tuple(wanted[inside].T)]
        covered[kernel] = hit.mean()
    assert covered["triton"] >= max(0.9, covered["torch"]), covered


def test_occlusion_edge_allocates_no_free_space_between_the_surfaces():
    """Bug caught: a band sampled over the whole depth range of a chunk of pixels (or a bounding box filled
    instead of marked), integrating the free space between a fold and the far lumen."""
    depth = np.full((CAM.height, CAM.width), 150.0, np.float32)
    depth[:, :77] = 20.0
    vol = TSDFVolume(1.0, 4.0, device=DEVICE, kernel="triton")
    vol.integrate(depth, None, CAM, np.eye(4))
    _, weight, _, origin = vol.to_grid()
    z = origin[2] + np.arange(weight.shape[2])
    observed = weight.max(axis=(0, 1)) > 0
    assert observed[(z > 16) & (z < 24)].all() and observed[(z > 146) & (z < 154)].all()
    assert not observed[(z > 40) & (z < 130)].any()


def test_far_outliers_fall_back_to_the_quadtree_allocation():
    """A few pixels at 10 km make the band's bounding box larger than the occupancy grid allowed: the frame is
    allocated by the quadtree instead. Bug caught: an occupancy grid of ~10^13 cells requested (out of memory)."""
    depth, rgb = scene(CAM, POSES[0])
    depth[:2, :2] = 1e7
    sums = []
    for kernel in ("torch", "triton"):
        vol = TSDFVolume(1.0, 4.0, device=DEVICE, kernel=kernel)
        vol.integrate(depth, rgb, CAM, POSES[0])
        sums.append(block_sums(vol))
    assert sums[0].keys() == sums[1].keys()
    assert_same_sums(*sums)


def test_three_frames_give_the_true_surface():
    """The Triton path end to end: three posed frames of exact depth, the mesh lies on the true surface and covers
    what the torch path's mesh covers. Bug caught: running sums of earlier frames overwritten instead of added."""
    vtk_to_numpy = pytest.importorskip("vtkmodules.util.numpy_support").vtk_to_numpy
    counts = {}
    for kernel in ("torch", "triton"):
        vol = TSDFVolume(1.0, 4.0, device=DEVICE, kernel=kernel)
        for pose in POSES:
            vol.integrate(*scene(CAM, pose), CAM, pose)
        assert vol.to_grid()[1].max() == len(POSES)
        pts = vtk_to_numpy(vol.extract_mesh().GetPoints().GetData()).astype(np.float64)
        assert np.median(true_distance(pts)) <= 0.1 and true_distance(pts).max() <= 1.5
        counts[kernel] = len(pts)
    assert counts["triton"] >= counts["torch"]


def test_auto_falls_back_to_torch_ops_when_the_kernels_fail(monkeypatch, caplog):
    """``kernel="auto"`` on a machine whose Triton cannot build for its GPU: one warning, then torch ops give the
    torch path's result. Bug caught: a CUDA user without a working Triton unable to fuse at all; or a half-fused
    frame after the failure."""
    from SurgicalDepthLib import tsdf_triton

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler for this GPU")

    monkeypatch.setattr(tsdf_triton, "fuse_blocks", broken)
    depth, rgb = scene(CAM, POSES[0])
    ref = TSDFVolume(1.0, 4.0, device=DEVICE, kernel="torch")
    ref.integrate(depth, rgb, CAM, POSES[0])
    vol = TSDFVolume(1.0, 4.0, device=DEVICE, kernel="triton")
    vol._kernel_auto = True  # what "auto" resolves to on a CUDA device with Triton installed
    with caplog.at_level(logging.WARNING, logger="SurgicalDepthLib.tsdf"):
        vol.integrate(depth, rgb, CAM, POSES[0])
        vol.integrate(depth, rgb, CAM, POSES[0])
    assert vol.kernel == "torch"
    assert [r.message for r in caplog.records if "Triton kernels failed" in r.message] == [
        "TSDFVolume: the Triton kernels failed (RuntimeError: no compiler for this GPU); fusing with torch ops instead"]
    ref.integrate(depth, rgb, CAM, POSES[0])
    assert_same_sums(block_sums(ref), block_sums(vol))
    with pytest.raises(RuntimeError, match="no compiler"):  # asked for explicitly: the failure is the caller's to see
        TSDFVolume(1.0, 4.0, device=DEVICE, kernel="triton").integrate(depth, rgb, CAM, POSES[0])
