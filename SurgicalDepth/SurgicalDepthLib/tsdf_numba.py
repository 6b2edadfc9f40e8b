"""Fused CPU kernel of the TSDF fusion (``tsdf.TSDFVolume(kernel="numba")``, the default on the CPU when Numba is
installed: ``pip install surgical-depth[fast]``). The torch path (``tsdf._fuse``) makes about twenty passes over a
frame's voxels (projection, clamps, gathers, unpacking, the scatter-add); compiled, one parallel loop over the blocks
does each voxel's work once. Same rule and float32 arithmetic in the same order as the torch ops, so the running sums
are identical; block allocation stays ``tsdf_allocation``'s. Compiled on first use (about a second; cached on disk).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from numba import njit, prange


def usable_on(device: torch.device) -> bool:
    """True where this kernel runs: the CPU."""
    return device.type == "cpu"


@njit(parallel=True, cache=True, fastmath=False)
def _fuse(block, local, pix, depth, colour, slots, sums, width, height, has_pix, has_colour):  # pragma: no cover
    """``fuse_blocks``'s loop: one block per iteration (blocks in parallel), its voxels in order."""
    one, zero = np.float32(1.0), np.float32(0.0)
    for b in prange(block.shape[1]):
        s = slots[b]
        for v in range(local.shape[1]):
            z = np.float32(block[2, b] + local[2, v])
            if has_pix:
                p = pix[b, v]
            else:  # pinhole: (u·z, v·z, z) in the padded image; behind the camera -> the border pixel 0
                inv_z = np.float32(one / z)
                u = np.float32(np.float32(block[0, b] + local[0, v]) * inv_z)
                w = np.float32(np.float32(block[1, b] + local[1, v]) * inv_z)
                if z <= 1e-9:
                    u, w = zero, zero
                p = np.int64(min(max(w, zero), np.float32(height + 1))) * (width + 2) + \
                    np.int64(min(max(u, zero), np.float32(width + 1)))
            tsdf = np.float32(depth[p] - z)  # (depth − z) / truncation; missing depth reads −float max
            if tsdf < -1.0:  # not observed: adds nothing
                continue
            sums[s, 0, v] += min(tsdf, one)
            sums[s, 1, v] += one
            if has_colour:  # packed r·65536 + g·256 + b, unpacked exactly (integers below 2^24)
                packed = colour[p]
                red = np.float32(np.floor(np.float32(packed * np.float32(1.0 / 65536))))
                packed = np.float32(packed - np.float32(red * np.float32(65536.0)))
                green = np.float32(np.floor(np.float32(packed * np.float32(1.0 / 256))))
                sums[s, 2, v] += red
                sums[s, 3, v] += green
                sums[s, 4, v] += np.float32(packed - np.float32(green * np.float32(256.0)))


def fuse_blocks(block: torch.Tensor, local: torch.Tensor, pix: torch.Tensor | None, depth: torch.Tensor,
                colour: torch.Tensor | None, slots: torch.Tensor, sums: torch.Tensor, width: int, height: int,
                behind: bool) -> torch.Tensor:
    """Add one frame's observation of the blocks at pool ``slots`` to ``sums``, in place; returns ``sums``. The
    arguments are ``tsdf_triton.fuse_blocks``'s (CPU tensors; ``behind`` is ignored: every voxel is tested)."""
    dummy = np.zeros((1, 1), np.int64)
    with warnings.catch_warnings():  # Numba's note that an installed TBB is too old for it (it uses OpenMP then)
        warnings.filterwarnings("ignore", message=".*TBB threading layer.*")
        _fuse(block.numpy(), local.numpy(), dummy if pix is None else pix.numpy(), depth.numpy(),
              depth.numpy() if colour is None else colour.numpy(), slots.numpy(), sums.numpy(), width, height,
              pix is not None, colour is not None)
    return sums
