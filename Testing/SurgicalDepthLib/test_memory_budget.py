"""Tests of SurgicalDepthLib.memory_budget: what a Slicer run's outputs take, the free memory, decimation."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from SurgicalDepthLib import memory_budget as mb


def test_estimate_matches_a_hand_computation():
    """Catches an estimate that forgets an output (the issue: ~0.29 GB per 1080p frame went unnoticed)."""
    w, h, n = 1920, 1080, 100
    px = w * h
    cloud = 200_000 * (12 + 3 + 4 + 8 + 8)  # xyz f32, RGB u8, Depth f32, one vertex cell (id + offset)
    mesh = px * (12 + 3 + 4 + 12) + 2 * (w - 1) * (h - 1) * 4 * 8  # + normals; 2 triangles per pixel square
    frame = 3 * px + 4 * px + cloud
    assert mb.estimate_output_bytes(w, h, n) == n * frame + frame  # + the browser's proxy nodes
    assert mb.estimate_output_bytes(w, h, n, meshes=True) == (n + 1) * (frame + mesh)
    # frames shared with the input browser: no RGB copy per frame (the proxy still holds one)
    assert mb.estimate_output_bytes(w, h, n, rgb_frames=False) == n * (frame - 3 * px) + frame
    full = mb.frame_output_bytes(w, h, point_budget=0)  # full resolution: every pixel is a point
    assert full.points == px * mb.POINT_BYTES and full.meshes == 0
    # the issue's ~0.29 GB per 1080p frame: RGB twice + depth + full cloud + mesh
    assert 0.27e9 < 2 * 3 * px + 4 * px + full.points + mesh < 0.31e9
    assert mb.frame_output_bytes(10, 10, point_budget=10_000).points == 100 * mb.POINT_BYTES  # budget > pixels
    assert mb.frame_output_bytes(10, 10, points=False, meshes=False).total == 700
    with pytest.raises(ValueError, match="point_budget"):
        mb.frame_output_bytes(10, 10, point_budget=-1)
    with pytest.raises(ValueError, match="frame size"):
        mb.frame_output_bytes(0, 10)


def test_fusion_needs_its_least_and_gets_what_the_budget_leaves():
    """Catches: the estimate leaving fusion out, though its TSDF block pool (up to 2.5 GiB at TSDFVolume's default
    max_blocks) and the mesh extraction's dense grid (up to max_voxels × 20 bytes) come on top of the outputs; and
    limits that give the volume more than the bytes it was given. The constants follow TSDFVolume's defaults."""
    import inspect

    from SurgicalDepthLib.tsdf import TSDFVolume
    from SurgicalDepthLib.tsdf_kernels import BLOCK

    defaults = {k: v.default for k, v in inspect.signature(TSDFVolume).parameters.items()}
    assert defaults["max_blocks"] * BLOCK ** 3 == defaults["max_voxels"] == mb.TSDF_MAX_VOXELS
    assert mb.FUSION_BYTES == 2 * (1 << 27) * 20 == 5 * 2 ** 30  # 2.5 GiB pool + 2.5 GiB extraction grid
    plain = mb.estimate_output_bytes(1920, 1080, 10)
    assert mb.estimate_output_bytes(1920, 1080, 10, fusion=True) == plain + mb.FUSION_MIN_BYTES
    assert mb.fusion_limits(10 * mb.FUSION_BYTES) == (defaults["max_blocks"], defaults["max_voxels"])
    blocks, voxels = mb.fusion_limits(mb.FUSION_MIN_BYTES)
    assert (blocks * BLOCK ** 3 + voxels) * mb.TSDF_VOXEL_BYTES <= mb.FUSION_MIN_BYTES
    assert voxels * mb.TSDF_VOXEL_BYTES > 0.49 * mb.FUSION_MIN_BYTES


def test_check_memory_budget_refuses_with_estimate_free_memory_and_fix():
    """Catches a run that starts anyway and exhausts memory, or a refusal that does not say what to change."""
    gib = 1 << 30
    mb.check_memory_budget(3 * gib, 8 * gib)  # under half of the free memory
    with pytest.raises(ValueError) as info:
        mb.check_memory_budget(5 * gib, 8 * gib)
    message = str(info.value)
    for part in ("5.0 GiB", "4.0 GiB", "free memory: 8.0 GiB", "stride", "max. frames", "point budget", "meshes"):
        assert part in message
    with pytest.raises(ValueError, match="budget of 1.0 GiB"):
        mb.check_memory_budget(2 * gib, 100 * gib, budget=gib)
    mb.check_memory_budget(2 * gib, None, budget=3 * gib)
    with pytest.raises(ValueError, match="fraction"):
        mb.check_memory_budget(1, 8, fraction=0)


def test_unknown_free_memory_is_not_refused(caplog):
    """Catches a refusal (or a crash) on systems where the free memory cannot be read: logged, not refused."""
    with caplog.at_level(logging.WARNING):
        mb.check_memory_budget(1 << 40, None)
    assert "free memory is unknown" in caplog.text


def test_meminfo_and_vm_stat_parsing():
    """Catches misread free memory (kB vs bytes, MemFree instead of MemAvailable, the macOS page size)."""
    meminfo = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    9000000 kB\n"
    assert mb.meminfo_available(meminfo) == 9_000_000 * 1024
    old_kernel = "MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 2 kB\nCached: 3 kB\n"
    assert mb.meminfo_available(old_kernel) == 15 * 1024
    assert mb.meminfo_available("nothing") is None
    vm_stat = ('Mach Virtual Memory Statistics: (page size of 16384 bytes)\nPages free:        100.\n'
               'Pages active:      900.\nPages inactive:    50.\nPages speculative: 10.\n')
    assert mb.vm_stat_available(vm_stat) == 160 * 16384
    assert mb.vm_stat_available("garbage") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/meminfo")
def test_available_memory_bytes_on_this_machine():
    """Catches a broken platform branch: on Linux the value is /proc/meminfo's MemAvailable, in bytes."""
    found = mb.available_memory_bytes()
    expected = mb.meminfo_available(Path("/proc/meminfo").read_text())
    assert isinstance(found, int) and found > 0
    assert abs(found - expected) < 0.2 * expected  # the machine's memory moves between the two reads


def test_decimation_step():
    """Catches a step that misses the budget by orders of magnitude, or decimates under budget."""
    assert mb.decimation_step(1920 * 1080, 200_000) == 4  # ceil(sqrt(10.4))
    assert mb.decimation_step(1000, 1000) == 1 and mb.decimation_step(1000, 0) == 1
    with pytest.raises(ValueError, match="budget"):
        mb.decimation_step(10, -1)


@pytest.mark.parametrize("budget", [1, 7, 100, 1000, 199_999, 200_000])
def test_decimate_mask_budget_grid_and_subset(budget, rng):
    """Catches clouds over the point budget, random (structure-losing) thinning, and invalid pixels kept."""
    valid = rng.random((1080 // 4, 1920 // 4)) > 0.3  # ragged invalid regions
    keep = mb.decimate_mask(valid, budget)
    n = int(keep.sum())
    assert n <= budget and not (keep & ~valid).any()
    if valid.sum() <= budget:
        assert np.array_equal(keep, valid)
        return
    assert n > 0
    # one regular grid: the same step and offset in v and u, and every valid pixel on it kept
    v, u = np.nonzero(keep)
    rows, cols = np.unique(v), np.unique(u)
    if len(rows) > 1 and len(cols) > 1:
        step = int(np.gcd.reduce(np.diff(rows)))
        assert step == int(np.gcd.reduce(np.diff(cols))) > 1 and rows[0] == cols[0] == step // 2
        assert keep[step // 2::step, step // 2::step].sum() == valid[step // 2::step, step // 2::step].sum() == n
    assert np.array_equal(keep, mb.decimate_mask(valid, budget))  # deterministic


def test_decimate_mask_full_resolution_and_adversarial_masks():
    """Catches budget 0 (full resolution) being decimated, and a valid set concentrated on the grid overflowing."""
    valid = np.ones((40, 60), bool)
    assert np.array_equal(mb.decimate_mask(valid, 0), valid)
    grid = np.zeros((400, 400), bool)
    grid[1::2, 1::2] = True  # exactly the pixels of a step-2 grid with offset 1
    keep = mb.decimate_mask(grid, grid.sum() // 4)
    assert keep.sum() <= grid.sum() // 4
    one = np.zeros((5, 5), bool)
    one[4, 4] = True
    assert mb.decimate_mask(one | np.eye(5, dtype=bool), 1).sum() <= 1
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        mb.decimate_mask(np.ones(5, bool), 3)
