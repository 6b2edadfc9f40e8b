"""Fused Triton kernels of the TSDF fusion (``tsdf.TSDFVolume(kernel="triton")``, the default on CUDA devices when
Triton is installed). A frame's integration on a GPU is bound by kernel launches, not arithmetic: the torch path
(``tsdf._fuse`` and ``tsdf_allocation.touched_blocks``) issues a few hundred small ones. Here one launch adds the
frame's observation of every visited voxel to the running sums (``fuse_blocks``), and two launches find the blocks
the frame's truncation band passes through (``band_blocks``). Same voxel grid, block layout and arithmetic as the
torch path. On the CPU, Triton runs only in its interpreter (``TRITON_INTERPRET=1`` set before Triton is imported):
slow, for tests.

Allocation here samples every pixel's band ``[depth − truncation, depth + truncation]`` every half block along its
ray (``tsdf_allocation``'s quadtree is the CPU's economy of the same sampling: one ray per tile whose footprint is at
most half a block) and marks the blocks in an occupancy grid over the band's bounding box, so the two paths allocate
nearly, not exactly, the same blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import triton
import triton.language as tl

from .tsdf_kernels import BLOCK, occupied_block_keys

MAX_CELLS = 1 << 26  # occupancy grid cells (int8) above which allocation falls back to the quadtree
_CHUNK = 1024  # pixels per program of the allocation kernel


def usable_on(device: torch.device) -> bool:
    """True where these kernels can run: CUDA devices, or any device in Triton's interpreter."""
    return device.type == "cuda" or bool(triton.knobs.runtime.interpret)


# integer arguments are not specialised (on divisibility by 16 or being 1): each new value class would compile anew
@triton.jit(do_not_specialize=["n_blocks", "width", "height"])
def _fuse_kernel(block_ptr, local_ptr, pix_ptr, depth_ptr, colour_ptr, slots_ptr, sums_ptr, n_blocks, width,
                 height, BEHIND: tl.constexpr, HAS_PIX: tl.constexpr, HAS_COLOUR: tl.constexpr,
                 VOXELS: tl.constexpr):
    """One program per block: its VOXELS voxels' projective tsdf, weight and colour added to the block's sums."""
    b = tl.program_id(0)
    v = tl.arange(0, VOXELS)
    z = tl.load(block_ptr + 2 * n_blocks + b) + tl.load(local_ptr + 2 * VOXELS + v)
    if HAS_PIX:  # a distorted camera: the pixels were found by the torch projection
        pix = tl.load(pix_ptr + b * VOXELS + v)
    else:  # pinhole: (u·z, v·z, z) in the padded image; behind the camera -> the border pixel 0
        inv_z = 1.0 / z
        u = (tl.load(block_ptr + b) + tl.load(local_ptr + v)) * inv_z
        w = (tl.load(block_ptr + n_blocks + b) + tl.load(local_ptr + VOXELS + v)) * inv_z
        if BEHIND:
            u = tl.where(z <= 1e-9, 0.0, u)
            w = tl.where(z <= 1e-9, 0.0, w)
        col = tl.minimum(tl.maximum(u, 0.0), width + 1.0).to(tl.int32)
        row = tl.minimum(tl.maximum(w, 0.0), height + 1.0).to(tl.int32)
        pix = row * (width + 2) + col
    tsdf = tl.load(depth_ptr + pix) - z  # (depth − z) / truncation; missing depth reads −float max
    weight = (tsdf >= -1.0).to(tl.float32)
    tsdf = tl.minimum(tl.maximum(tsdf, -1.0), 1.0) * weight
    sums = sums_ptr + tl.load(slots_ptr + b) * (5 * VOXELS) + v  # planes: tsdf, weight, red, green, blue
    tl.store(sums, tl.load(sums) + tsdf)
    tl.store(sums + VOXELS, tl.load(sums + VOXELS) + weight)
    if HAS_COLOUR:  # packed r·65536 + g·256 + b, unpacked exactly (integers below 2^24)
        packed = tl.load(colour_ptr + pix) * weight
        red = tl.floor(packed * (1.0 / 65536))
        packed = packed - red * 65536.0
        green = tl.floor(packed * (1.0 / 256))
        tl.store(sums + 2 * VOXELS, tl.load(sums + 2 * VOXELS) + red)
        tl.store(sums + 3 * VOXELS, tl.load(sums + 3 * VOXELS) + green)
        tl.store(sums + 4 * VOXELS, tl.load(sums + 4 * VOXELS) + (packed - green * 256.0))


def fuse_blocks(block: torch.Tensor, local: torch.Tensor, pix: torch.Tensor | None, depth: torch.Tensor,
                colour: torch.Tensor | None, slots: torch.Tensor, sums: torch.Tensor, width: int, height: int,
                behind: bool) -> torch.Tensor:
    """Add one frame's observation of the blocks at pool ``slots`` to ``sums``, in place (``tsdf._fuse``'s rule);
    returns ``sums``.

    Args:
        block: float32 [3, n], each block's part of the voxel centres' ``_projection`` coordinates (truncation units).
        local: float32 [3, BLOCK³], the voxels' part (row-major voxel order of the sums).
        pix: int32 [n, BLOCK³] padded-image pixel of every voxel (distorted cameras), or None to project here.
        depth: float32 padded depth / truncation, −float max where missing. colour: float32 padded packed colour
            (``tsdf_kernels.pack_rgb``) or None. slots: int64 [n], unique. sums: float32 [capacity, 5, BLOCK³].
        width, height: image size (pixels). behind: some voxels may lie at ``z <= 1e-9`` (checked only then).
    """
    n = block.shape[1]
    _fuse_kernel[(n,)](block, local, pix if pix is not None else slots, depth, colour if colour is not None else depth,
                       slots, sums, n, width, height, BEHIND=behind, HAS_PIX=pix is not None,
                       HAS_COLOUR=colour is not None, VOXELS=BLOCK ** 3)
    return sums


@triton.jit
def _box_axis(out_ptr, corner, dirs, z0, z1, m):
    """Smallest and largest block coordinate (one axis) of the band end points ``corner + dirs · z`` of the lanes
    ``m``, into ``out_ptr[0]`` and ``out_ptr[3]`` by atomic min / max (coordinates clamped to ±2^30)."""
    a = tl.floor(tl.minimum(tl.maximum(corner + dirs * z0, -1073741824.0), 1073741824.0)).to(tl.int32)
    c = tl.floor(tl.minimum(tl.maximum(corner + dirs * z1, -1073741824.0), 1073741824.0)).to(tl.int32)
    tl.atomic_min(out_ptr, tl.min(tl.where(m, tl.minimum(a, c), 2147483647), axis=0))
    tl.atomic_max(out_ptr + 3, tl.max(tl.where(m, tl.maximum(a, c), -2147483647), axis=0))


@triton.jit(do_not_specialize=["n_pix", "n_steps", "ext_y", "ext_z"])
def _band_kernel(depth_ptr, dirs_ptr, step_ptr, out_ptr, n_pix, corner_x, corner_y, corner_z, truncation, n_steps,
                 lo_x, lo_y, lo_z, ext_y, ext_z, hi_x, hi_y, hi_z, BOX: tl.constexpr, CHUNK: tl.constexpr):
    """BOX: the band's bounding box in block coordinates into ``out`` int32 [6] (min x, y, z, max x, y, z, by
    atomics); else every band sample's block marked 1 in ``out``, the int8 occupancy grid over that box."""
    p = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
    d = tl.load(depth_ptr + p, mask=p < n_pix, other=0.0)
    m = d > 0
    dx = tl.load(dirs_ptr + p, mask=m, other=0.0)
    dy = tl.load(dirs_ptr + n_pix + p, mask=m, other=0.0)
    dz = tl.load(dirs_ptr + 2 * n_pix + p, mask=m, other=0.0)
    z0 = d - truncation
    z1 = d + truncation
    if BOX:  # the end points bound the samples between them: the floor is monotonic along the segment
        _box_axis(out_ptr, corner_x, dx, z0, z1, m)
        _box_axis(out_ptr + 1, corner_y, dy, z0, z1, m)
        _box_axis(out_ptr + 2, corner_z, dz, z0, z1, m)
    else:
        step = tl.load(step_ptr + p, mask=m, other=0.0)
        for s in range(n_steps):
            z = tl.minimum(z0 + s * step, z1)
            cx = (tl.floor(tl.minimum(tl.maximum(corner_x + dx * z, lo_x), hi_x)) - lo_x).to(tl.int32)
            cy = (tl.floor(tl.minimum(tl.maximum(corner_y + dy * z, lo_y), hi_y)) - lo_y).to(tl.int32)
            cz = (tl.floor(tl.minimum(tl.maximum(corner_z + dz * z, lo_z), hi_z)) - lo_z).to(tl.int32)
            tl.store(out_ptr + (cx * ext_y + cy) * ext_z + cz, tl.full([CHUNK], 1, tl.int8), mask=m)


@dataclass(frozen=True)
class RayTable:
    """A camera's pixel rays for ``band_blocks``: ``rays`` float32 [3, H·W], each pixel's ray (x, y, 1) in the camera
    frame; ``steps`` float32 [H·W], the depth step that advances it by half a block; ``n_steps``, samples per band
    (enough for the smallest step); ``block_len``, the block edge (depth unit)."""
    rays: torch.Tensor
    steps: torch.Tensor
    n_steps: int
    block_len: float

    @classmethod
    def of(cls, pixel_rays: torch.Tensor, block_len: float, truncation: float) -> "RayTable":
        """From ``camera.pixel_rays`` float32 [H, W, 2] (0 where a pixel has no ray; its depth must be 0)."""
        xy = pixel_rays.reshape(-1, 2)
        rays = torch.cat([xy, torch.ones_like(xy[:, :1])], 1).T.contiguous()
        steps = 0.5 * block_len / torch.linalg.vector_norm(rays, dim=0)
        # +1 sample beyond the band's length: the rounding of z0 + s · step (samples past the end are clamped to it)
        return cls(rays, steps, math.ceil(2.0 * truncation / float(steps.min())) + 2, float(block_len))


def band_blocks(d: torch.Tensor, table: RayTable, R: torch.Tensor, camera: Sequence[float], truncation: float
                ) -> torch.Tensor | None:
    """Sorted unique keys (``tsdf_kernels.encode_block_keys``) of the blocks that every valid pixel's truncation band
    passes through, sampled every half block; None when the band's bounding box exceeds ``MAX_CELLS`` blocks (far
    outliers: the caller's quadtree allocation handles those without a grid) or there is no valid pixel.

    Args:
        d: float32 depth [H, W], 0 where invalid, with at least one valid pixel. table: the camera's ``RayTable``.
        R: camera-to-volume rotation [3, 3]. camera: the camera centre relative to the volume's origin, three
            floats (on the host: no device round trip).
        truncation: the band's half width (depth unit).
    """
    n_pix = d.numel()
    grid = (triton.cdiv(n_pix, _CHUNK),)
    dirs = (R / table.block_len) @ table.rays  # [3, H·W], block units per depth unit, volume frame
    corner = [c / table.block_len + 0.5 / BLOCK for c in camera]  # +half a voxel: blocks start half a voxel before
    box = torch.tensor([2 ** 31 - 1] * 3 + [-(2 ** 31 - 1)] * 3, dtype=torch.int32, device=d.device)
    args = (d.reshape(-1), dirs, table.steps, box, n_pix, *corner, truncation, table.n_steps)
    _band_kernel[grid](*args, 0.0, 0.0, 0.0, 1, 1, 0.0, 0.0, 0.0, BOX=True, CHUNK=_CHUNK)
    lo, hi = box.view(2, 3).tolist()
    ext = [h - low + 1 for low, h in zip(lo, hi)]
    if min(ext) < 1 or math.prod(ext) > MAX_CELLS:  # (no box: no valid pixel, which the caller rules out)
        return None
    occupied = torch.zeros(math.prod(ext), dtype=torch.int8, device=d.device)
    _band_kernel[grid](*args[:3], occupied, *args[4:], *(float(x) for x in lo), ext[1], ext[2],
                       *(h + 0.5 for h in hi), BOX=False, CHUNK=_CHUNK)
    return occupied_block_keys(occupied.bool(), torch.tensor(lo, device=d.device), ext)
